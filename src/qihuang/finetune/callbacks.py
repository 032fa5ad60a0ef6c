"""Trainer callbacks and plots shared by the SFT and DPO stages (imports transformers: load lazily)."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from qihuang.finetune.distributed import agree
from qihuang.runs import MetricsLog
from qihuang.training.schedule import lr_at, steps_in_budget

class LogToMetrics(TrainerCallback):  # type: ignore[misc]
    """Copy the trainer's log lines (loss, lr, eval_loss, ...) into the stage's metrics.jsonl (from the main process:
    under `accelerate launch` every process logs the same, gathered, values)."""

    def __init__(self, log: MetricsLog) -> None:
        self.log = log

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs and state.is_world_process_zero:
            self.log.log(step=state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))})


class TimeBudget(TrainerCallback):  # type: ignore[misc]
    """Stop training (validating and checkpointing first) once `minutes` have passed. With `fit_schedule`, the LR
    schedule (linear warm-up over the `warmup` fraction, cosine to `min_lr_ratio`; `qihuang.training.schedule.lr_at`,
    as pretraining) spans the steps the budget allows, re-estimated after every step from the mean step time (the
    first step, which warms caches up, excluded): the LR anneals by the end instead of being cut off near its peak
    — a 4-minute SFT on 2 cores is 11–22 steps of a nominal ~100-step schedule."""

    def __init__(self, minutes: float | None, fit_schedule: bool = False, warmup: float = 0.05,
                 min_lr_ratio: float = 0.1) -> None:
        self.minutes = minutes
        self.fit_schedule = fit_schedule and minutes is not None
        self.warmup = warmup
        self.min_lr_ratio = min_lr_ratio
        self.t0 = time.time()
        self.t1: float | None = None
        self.hit = False
        self.schedule_steps: int | None = None
        """Steps the fitted schedule spans now (None: the trainer's own schedule)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.t0 = time.time()
        if self.fit_schedule and kw.get("lr_scheduler") is not None:
            self._fit(kw["lr_scheduler"], max(int(state.max_steps), 1))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        now = time.time()
        if self.minutes is None:
            return control
        fitted = None
        if state.global_step == 1:
            self.t1 = now
        elif self.fit_schedule and self.t1 is not None and kw.get("lr_scheduler") is not None:
            per_step = (now - self.t1) / (state.global_step - 1)
            left = self.minutes * 60 - (now - self.t0)
            fitted = steps_in_budget(state.global_step, per_step, left)
        # under `accelerate launch` each process has its own clock: all follow the fewest steps and stop together
        over, fitted = agree(now - self.t0 > self.minutes * 60, fitted)
        if fitted is not None:
            self._fit(kw["lr_scheduler"], max(min(fitted, int(state.max_steps)), state.global_step + 1))
        if over:
            self.hit = True
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"
        return control

    def _fit(self, scheduler: Any, total: int) -> None:
        """Make `scheduler` (a LambdaLR) follow warm-up + cosine over `total` steps, from its current step on."""
        warm = int(self.warmup) if self.warmup >= 1 else math.ceil(self.warmup * total)
        rule = functools.partial(lr_at, base_lr=1.0, warmup=warm, total=total, min_lr_ratio=self.min_lr_ratio)
        scheduler.lr_lambdas = [rule for _ in scheduler.lr_lambdas]
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * rule(scheduler.last_epoch)
        self.schedule_steps = total


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
    """Trainable and total parameter counts (a ZeRO-3 shard counts as the whole parameter: its `ds_numel`)."""
    def size(p: Any) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    total = sum(size(p) for p in model.parameters())
    return {"trainable": sum(size(p) for p in model.parameters() if p.requires_grad), "total": total}
