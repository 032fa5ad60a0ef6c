"""`qihuang eval ...` commands."""

from __future__ import annotations

import click


@click.group("eval")
def eval_cli() -> None:
    """Evaluation: bpc, mcq, qa, compare."""
