"""Preference tuning (#6): DPO on comparison pairs with a reference model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from qihuang.runs import StageDir


@dataclass
class DPOConfig:
    """DPO data, method and budget."""

    enabled: bool = True
    """Run the DPO stage."""


def dpo(cfg: DPOConfig, model_dir: Path, out: StageDir) -> dict[str, Any]:
    """Write out.path/'model' (merged)."""
    raise NotImplementedError("dpo stage: being built (#6)")


@click.command("dpo")
def dpo_cli() -> None:
    """Preference tuning (DPO)."""
