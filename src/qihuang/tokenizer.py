"""Vocabulary extension (#4): add the Chinese characters the base tokenizer splits, resize embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from qihuang.runs import StageDir


@dataclass
class TokenizerConfig:
    """How to extend the base tokenizer."""

    enabled: bool = True
    """Extend the vocabulary (false: pass the base model through unchanged)."""


def extend_tokenizer(cfg: TokenizerConfig, model_dir: Path, train: Path, heldout: Path, out: StageDir) -> dict[str, Any]:
    """Write the extended model into out.path/'model'."""
    raise NotImplementedError("tokenizer stage: being built (#4)")


@click.group("tokenizer")
def tokenizer_cli() -> None:
    """Vocabulary extension."""
