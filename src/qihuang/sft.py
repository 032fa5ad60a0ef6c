"""Supervised fine-tuning (#6): LoRA or full, the base's chat template, loss on assistant tokens only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from qihuang.runs import StageDir


@dataclass
class SFTConfig:
    """SFT data, method and budget."""

    data: list[Path] = ()  # type: ignore[assignment]
    """Training files (qihuang dialogues, Alpaca, ShareGPT or OpenAI messages JSON/JSONL)."""


def sft(cfg: SFTConfig, model_dir: Path, out: StageDir) -> dict[str, Any]:
    """Write out.path/'model' (merged) and out.path/'adapter'."""
    raise NotImplementedError("sft stage: being built (#6)")


@click.command("sft")
def sft_cli() -> None:
    """Supervised fine-tuning."""
