"""Shared training machinery (#4): packing, the training loop, checkpoints, schedules, spike guard, bits/char."""

from __future__ import annotations

from qihuang.training.bpc import bits_per_char

__all__ = ["bits_per_char"]
