"""`qihuang chat`, `qihuang serve`, `qihuang search` commands."""

from __future__ import annotations

import click


@click.command("serve")
def serve_cli() -> None:
    """OpenAI-compatible API and web chat."""


@click.command("chat")
def chat_cli() -> None:
    """Terminal chat."""


@click.command("search")
def search_cli() -> None:
    """Search the classics."""
