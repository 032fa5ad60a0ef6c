"""Classics corpus (#3): ingest raw books, clean, deduplicate, filter, split into passages with provenance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.runs import StageDir


@dataclass
class CorpusConfig:
    """Where the classics come from and how they become passages."""

    source: Path | None = None
    """Directory of raw books; default $QIHUANG_DATA, else ../shared/data/classics."""
    max_books: int | None = None
    """Use at most this many books (after held-out books are set aside), for quick runs."""


def build_corpus(cfg: CorpusConfig, out: StageDir) -> dict[str, Any]:
    """Write train.jsonl / heldout.jsonl / rejects.jsonl / card into `out.path`."""
    raise NotImplementedError("corpus stage: being built (#3)")
