"""Trainer callbacks and plots shared by the SFT and DPO stages (imports transformers: load lazily)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from qihuang.runs import MetricsLog

class LogToMetrics(TrainerCallback):  # type: ignore[misc]
    """Copy the trainer's log lines (loss, lr, eval_loss, ...) into the stage's metrics.jsonl."""

    def __init__(self, log: MetricsLog) -> None:
        self.log = log

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs:
            self.log.log(step=state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))})


class TimeBudget(TrainerCallback):  # type: ignore[misc]
    """Stop training (validating and checkpointing first) once `minutes` have passed."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.t0 = time.time()
        self.hit = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.t0 = time.time()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.minutes is not None and time.time() - self.t0 > self.minutes * 60:
            self.hit = True
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"
        return control


def plot_losses(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training and validation loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "train"), ("eval_loss", "validation")):
        pts = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        if pts:
            ax.plot(*zip(*pts), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def trainable_summary(model: Any) -> dict[str, int]:
    """Trainable and total parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "total": total}
