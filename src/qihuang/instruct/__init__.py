"""Instruction data (#5): knowledge-guided self-QA (teacher), offline generators, refine, integrate, mix, card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qihuang.textmetrics import grounding_score
from qihuang.instruct.settings import InstructConfig
from qihuang.runs import StageDir

__all__ = ["InstructConfig", "build_instructions", "grounding_score"]


def build_instructions(cfg: InstructConfig, passages: Path, out: StageDir) -> dict[str, Any]:
    """Write train.jsonl / train_alpaca.jsonl / heldout_qa.jsonl / rejects.jsonl / card into out.path.

    (Heavy imports happen here, so `import qihuang.instruct` stays cheap for the CLI and other stages.)"""
    from qihuang.instruct.build import build_instructions as _build

    return _build(cfg, passages, out)
