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


Decision = Literal["ok", "skip", "rollback"]


@dataclass
class SpikeGuard:
    """Skip a step whose loss exceeds `factor` × its moving average; `max_in_row` skips in a row → roll back.

    The average is an EMA of accepted losses; it starts judging after `min_steps` accepted steps.
    factor <= 0 disables the guard.
    """

    factor: float = 3.0
    max_in_row: int = 3
    min_steps: int = 10
    beta: float = 0.9
    ema: float | None = None
    accepted: int = 0
    in_row: int = 0
    skipped: int = 0
    rollbacks: int = 0

    def check(self, loss: float) -> Decision:
        """Judge one step's loss and update the state."""
        spike = not math.isfinite(loss) or (
            self.factor > 0 and self.ema is not None and self.accepted >= self.min_steps
            and loss > self.factor * self.ema
        )
        if spike:
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
        return "ok"

    def state(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
