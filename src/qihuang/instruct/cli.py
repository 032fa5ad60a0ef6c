"""`qihuang instruct ...` commands."""

from __future__ import annotations

import click


@click.group("instruct")
def instruct_cli() -> None:
    """Instruction data: generate (teacher or offline), refine, card."""
