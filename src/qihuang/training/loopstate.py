"""The training loop's state: its counters (kept in checkpoints), the schedule fit, the session clock, and the
loop's checkpoints (counters + spike guard beside accelerate's model, optimizer and RNG states)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qihuang.training.checkpoint import load_latest, save_checkpoint
from qihuang.training.schedule import SpikeGuard


@dataclass
class LoopState:
    """The loop's counters: what a checkpoint's meta.json records (with the spike guard's state)."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    """Training seconds before this session (or the last rollback) began."""
    lr_scale: float = 1.0
    evals: list[dict[str, Any]] = field(default_factory=list)
    schedule_steps: int = 0
    schedule_fitted: bool = False

    def to_meta(self, train_seconds: float) -> dict[str, Any]:
        """meta.json's counters as of `train_seconds` of training (save_checkpoint adds the step)."""
        return {"tokens": self.tokens, "lr_scale": self.lr_scale, "evals": self.evals,
                "schedule_steps": self.schedule_steps, "schedule_fitted": self.schedule_fitted,
                "train_seconds": train_seconds}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], schedule_steps: int) -> LoopState:
        """The counters of a checkpoint (one written before the schedule could be fitted: `schedule_steps`)."""
        return cls(step=meta["step"], tokens=meta["tokens"], train_seconds=meta["train_seconds"],
                   lr_scale=meta["lr_scale"], evals=meta["evals"],
                   schedule_steps=meta.get("schedule_steps", schedule_steps),
                   schedule_fitted=meta.get("schedule_fitted", False))


@dataclass
class ScheduleFit:
    """Fitting the cosine schedule to the time budget at step `at`: the steps after `opens_after` are timed (the
    first one, with its kernel warm-up and allocations, is not)."""

    at: int
    opens_after: int
    opened: float | None = None
    """time.time() when the timing window opened."""

    @classmethod
    def starting_at(cls, step: int) -> ScheduleFit:
        """Steps step+2 .. step+8 timed, the schedule fitted before step+9."""
        return cls(at=step + 8, opens_after=step + 1)

    def stepped(self, step: int) -> None:
        """Step `step` is done: open the timing window after the first one."""
        if step == self.opens_after:
            self.opened = time.time()

    def seconds_per_step(self) -> float:
        """Mean wall time of the timed steps, as of now (the window opened when step `opens_after` ended)."""
        return (time.time() - self.opened) / max(self.at - self.opens_after, 1)  # type: ignore[operator]


@dataclass
class Clock:
    """This session's wall time: training seconds so far, the last checkpoint, the throughput window."""

    base_seconds: float
    """Training seconds when this session (or the last rollback) began."""
    session_t0: float = field(default_factory=time.time)
    last_ckpt_t: float = field(default_factory=time.time)
    win_t: float = field(default_factory=time.time)
    win_tokens: int = 0

    def elapsed(self) -> float:
        """Training seconds, earlier sessions included."""
        return self.base_seconds + time.time() - self.session_t0

    def restart(self, base_seconds: float) -> None:
        """Count from `base_seconds` (a rollback to a checkpoint) from now on."""
        self.session_t0, self.base_seconds = time.time(), base_seconds

    def tokens_per_s(self) -> float:
        """Throughput since the window opened (the last metrics row, or the last evaluation)."""
        return self.win_tokens / max(time.time() - self.win_t, 1e-9)

    def open_window(self) -> None:
        """Throughput is measured from now."""
        self.win_t, self.win_tokens = time.time(), 0


@dataclass
class LoopCheckpoints:
    """The loop's checkpoints under `root` (`qihuang.training.checkpoint`): its counters, the guard's state."""

    accelerator: Any
    root: Path
    keep: int
    warn: Callable[[str], None] | None

    def load(self, guard: SpikeGuard, schedule_steps: int, rollback: bool = False) -> LoopState | None:
        """The newest usable checkpoint's counters (model, optimizer and RNG states loaded); None if none."""
        meta = load_latest(self.accelerator, self.root, self.warn)
        if meta is None:
            return None
        state = LoopState.from_meta(meta, schedule_steps)
        guard.load(meta["guard"], keep_counters=rollback)
        return state

    def save(self, state: LoopState, guard: SpikeGuard, clock: Clock) -> None:
        """Checkpoint at `state.step` (training seconds as of now); the clock notes when."""
        meta = {**state.to_meta(clock.elapsed()), "guard": guard.state()}
        save_checkpoint(self.accelerator, self.root, state.step, meta, keep=self.keep, warn=self.warn)
        clock.last_ckpt_t = time.time()
