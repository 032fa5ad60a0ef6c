"""Evaluation (#7): bits per character, multiple-choice exams, open QA, side-by-side reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.runs import StageDir


@dataclass
class EvalConfig:
    """What to evaluate and how much of it."""

    bpc_max_chars: int = 20000
    """Characters of held-out text scored per model."""


def evaluate_models(cfg: EvalConfig, models: dict[str, Path], heldout: Path, heldout_qa: Path | None,
                    out: StageDir) -> dict[str, Any]:
    """Write results.json and report.md into out.path."""
    raise NotImplementedError("eval stage: being built (#7)")
