"""Learning-rate schedule (linear warm-up, cosine to a floor) and the loss-spike guard."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_lr_ratio: float) -> float:
    """LR for optimizer step `step` (0-based): linear warm-up over `warmup` steps, cosine to base·min_lr_ratio."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_in_budget(step: int, seconds_per_step: float, seconds_left: float) -> int:
    """The optimizer steps a time budget allows in all: `step` done plus what `seconds_left` holds at the measured
    pace (never fewer than `step`). Pretraining and the trl stages fit their cosine to it."""
    return step + max(int(seconds_left / max(seconds_per_step, 1e-9)), 0)


Decision = Literal["ok", "skip", "rollback"]


@dataclass
class SpikeGuard:
    """Skip a step whose loss exceeds `factor` × its moving average, or whose gradient norm exceeds
    `grad_factor` × the moving average of accepted gradient norms; `max_in_row` skips in a row → roll back.

    Averages are EMAs over accepted steps; judging starts after `min_steps` of them. factor <= 0 (grad_factor <= 0)
    disables that arm; a non-finite loss or gradient norm is always a spike (clipping would spread it over every
    weight). The gradient arm is off by default: on the demo it skipped steps without removing the cause of the
    spikes (short new embedding rows, see TokenizerConfig.rescale_new_rows) and ended worse.
    """

    COUNTERS = ("skipped", "grad_skipped", "rollbacks")
    """Cumulative counts: kept when the guard is rolled back to a checkpoint's state."""

    factor: float = 3.0
    max_in_row: int = 3
    min_steps: int = 10
    beta: float = 0.9
    grad_factor: float = 0.0
    ema: float | None = None
    grad_ema: float | None = None
    accepted: int = 0
    in_row: int = 0
    skipped: int = 0
    grad_skipped: int = 0
    rollbacks: int = 0

    def check(self, loss: float, grad_norm: float | None = None) -> Decision:
        """Judge one step's loss (and, if given, its gradient norm before clipping) and update the state."""
        judging = self.accepted >= self.min_steps
        spike = not math.isfinite(loss) or (
            self.factor > 0 and self.ema is not None and judging and loss > self.factor * self.ema
        )
        grad_spike = grad_norm is not None and (not math.isfinite(grad_norm) or (
            self.grad_factor > 0 and self.grad_ema is not None and judging
            and grad_norm > self.grad_factor * self.grad_ema))
        if grad_spike and not spike:
            self.grad_skipped += 1
        if spike or grad_spike:
            self.skipped += 1
            self.in_row += 1
            if self.in_row >= self.max_in_row:
                self.in_row = 0
                self.rollbacks += 1
                return "rollback"
            return "skip"
        self.in_row = 0
        self.accepted += 1
        self.ema = loss if self.ema is None else self.beta * self.ema + (1 - self.beta) * loss
        if grad_norm is not None:
            self.grad_ema = (grad_norm if self.grad_ema is None
                             else self.beta * self.grad_ema + (1 - self.beta) * grad_norm)
        return "ok"

    def state(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, state: dict[str, Any], keep_counters: bool = False) -> None:
        """Restore a saved state; keep_counters: a rollback, the skip/rollback counts so far stay."""
        for k, v in state.items():
            if not (keep_counters and k in self.COUNTERS):
                setattr(self, k, v)
