"""Instruction data (#5): knowledge-guided self-QA, offline generators, refine, integrate, mix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.runs import StageDir


@dataclass
class InstructConfig:
    """How instruction data is generated and refined."""

    max_pairs: int | None = None
    """Keep at most this many pairs."""


def build_instructions(cfg: InstructConfig, passages: Path, out: StageDir) -> dict[str, Any]:
    """Write train.jsonl / heldout_qa.jsonl / rejects.jsonl / card into out.path."""
    raise NotImplementedError("instruct stage: being built (#5)")
