"""`qihuang corpus ...` commands."""

from __future__ import annotations

import click


@click.group("corpus")
def corpus_cli() -> None:
    """Classics corpus: build passages, card, held-out split; fetch the public corpus."""
