"""Classics corpus (#3): ingest raw books, clean, deduplicate, filter, split into passages with provenance."""

from __future__ import annotations

from qihuang.corpus.build import build_corpus
from qihuang.corpus.settings import CorpusConfig

__all__ = ["CorpusConfig", "build_corpus"]
