"""Training metrics: FLOPs/MFU estimates, optional TensorBoard, and the loss-curve PNG."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# dense bf16 peak (TFLOP/s) per accelerator name fragment; CPU has no entry (MFU left out unless configured)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40": 181.0, "4090": 165.0}


def flops_per_token(n_params: int, n_trainable: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: forward 2N, input-grad backward 2N, weight-grad backward 2·N_trainable, plus
    causal attention."""
    attn = 6 * n_layers * hidden * seq_len
    return 4 * n_params + 2 * n_trainable + attn


def peak_tflops(device: Any, configured: float | None) -> float | None:
    """Configured peak, else a table entry for a CUDA device's name; None on CPU."""
    if configured:
        return configured
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        for key, val in PEAK_TFLOPS.items():
            if key in name:
                return val
    return None


TENSORBOARD_MISSING = ("tensorboard: true, but the tensorboard package is not installed (pip install -e "
                       "'.[tensorboard]'); training goes on, scalars stay in metrics.jsonl")


class TensorBoard:
    """TensorBoard scalars when asked for; when the package is missing, `warn` says so once and nothing is written."""

    def __init__(self, logdir: Path, enabled: bool, warn: Callable[[str], None] | None = None) -> None:
        self.writer: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(logdir))
            except ImportError:
                print(f"warning: {TENSORBOARD_MISSING}", file=sys.stderr)
                if warn is not None:
                    warn(TENSORBOARD_MISSING)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_loss(records: list[dict[str, Any]], path: Path) -> Path | None:
    """loss (per step, last value wins after a resume) and held-out bits/char → PNG; None without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qihuang.runs import atomic_path

    loss = {r["step"]: r["loss"] for r in records if "loss" in r and "step" in r}
    bpc = {r["step"]: r["bpc"] for r in records if "bpc" in r and "step" in r}
    if not loss and not bpc:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        xs = sorted(loss)
        ax.plot(xs, [loss[x] for x in xs], color="tab:blue", lw=1, label="train loss (nats/token)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss")
    if bpc:
        ax2 = ax.twinx()
        xs = sorted(bpc)
        ax2.plot(xs, [bpc[x] for x in xs], "o-", color="tab:red", label="held-out bits/char")
        ax2.set_ylabel("held-out bits/char")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("continual pretraining")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
