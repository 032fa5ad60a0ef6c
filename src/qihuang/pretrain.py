"""Continual pretraining (#4) on passages mixed with general text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from qihuang.runs import StageDir


@dataclass
class PretrainConfig:
    """Continual pretraining budget and hyper-parameters."""

    max_steps: int = 100
    """Stop after this many optimizer steps."""
    max_minutes: float | None = None
    """Stop after this much wall time (whichever comes first)."""


def pretrain(cfg: PretrainConfig, model_dir: Path, train: Path, heldout: Path, out: StageDir) -> dict[str, Any]:
    """Write the trained model into out.path/'model'."""
    raise NotImplementedError("pretrain stage: being built (#4)")


@click.command("pretrain")
def pretrain_cli() -> None:
    """Continual pretraining."""
