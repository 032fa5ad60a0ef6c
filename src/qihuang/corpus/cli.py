"""`qihuang corpus ...` commands: build, fetch, manifest, card."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from qihuang.cliutil import config_options
from qihuang.config import ConfigError
from qihuang.corpus.settings import DEFAULT_UPSTREAM, CorpusConfig


@click.group("corpus")
def corpus_cli() -> None:
    """Classics corpus: build passages, card, held-out split; fetch the public corpus."""


@corpus_cli.command("build")
@config_options(CorpusConfig)
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("runs/default/corpus"),
              show_default=True, help="Stage folder to write train/heldout/rejects JSONL and the card into.")
@click.option("--force", is_flag=True, help="Rebuild even if the folder holds a finished build.")
def build_cmd(cfg: CorpusConfig, out: Path, force: bool) -> None:
    """Ingest, clean, deduplicate and split the classics into passages (+ card.md/json/png)."""
    from qihuang.corpus.build import build_corpus
    from qihuang.runs import StageDir, run_stage

    sd = StageDir(out)
    try:
        summary = run_stage(sd, cfg, lambda: build_corpus(cfg, sd), force=force)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if summary.get("skipped"):
        click.echo(f"{out}: already built (use --force to rebuild)")
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
    click.echo(f"card: {out / 'card.md'}")


@corpus_cli.command("fetch")
@click.option("--dest", type=click.Path(path_type=Path), default=None,
              help="Where to put the books [default: $QIHUANG_DATA_ROOT/classics, else ~/.cache/qihuang/classics].")
@click.option("--upstream", default=DEFAULT_UPSTREAM, show_default=True, help="Base URL of the raw books.")
@click.option("--manifest", default=None,
              help="Manifest (file or URL, sha256sum format) [default: <upstream>/MANIFEST.sha256].")
@click.option("--only", multiple=True, help="Fetch only these files (repeatable).")
@click.option("--retries", default=2, show_default=True, help="Retries per file (each resumes the partial file).")
def fetch_cmd(dest: Path | None, upstream: str, manifest: str | None, only: tuple[str, ...], retries: int) -> None:
    """Download the public corpus, verifying checksums; rerun to resume an interrupted download."""
    from qihuang.config import DATA_ROOT_ENV, qihuang_home
    from qihuang.corpus.fetch import FetchError, fetch

    env = os.environ.get(DATA_ROOT_ENV)
    target = dest or ((Path(env) if env else qihuang_home()) / "classics")
    try:
        report = fetch(target, upstream, manifest, list(only) or None, retries=retries, log=click.echo)
    except FetchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{target}: {len(report.downloaded)} downloaded ({len(report.resumed)} resumed), "
               f"{len(report.up_to_date)} already verified, {len(report.failed)} failed, {report.bytes} bytes")
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} file(s) failed; rerun to resume: "
                                   + "; ".join(report.failed.values())[:2000])
    if not env and dest is None:
        click.echo(f"set {DATA_ROOT_ENV}={target.parent} (or pass --source {target}) to build from it")


@corpus_cli.command("manifest")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[default: DIRECTORY/MANIFEST.sha256]")
def manifest_cmd(directory: Path, out: Path | None) -> None:
    """Write a SHA-256 manifest of a local copy (to serve it as an upstream for `fetch`)."""
    from qihuang.corpus.fetch import write_manifest

    click.echo(str(write_manifest(directory, out)))


@corpus_cli.command("card")
@click.argument("stage_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
def card_cmd(stage_dir: Path) -> None:
    """Print the headline numbers of a built corpus (from card.json) and where the card is."""
    path = stage_dir / "card.json"
    if not path.exists():
        raise click.ClickException(f"{path}: not found; run `qihuang corpus build --out {stage_dir}` first")
    card = json.loads(path.read_text(encoding="utf-8"))
    for key in ("books_seen", "books_ingested", "books_rejected", "books_skipped", "train_passages",
                "heldout_passages", "train_chars", "heldout_chars", "duplicates_removed", "passages_rejected",
                "replacement_chars"):
        click.echo(f"{key}: {card.get(key)}")
    click.echo(f"rejects_by_reason: {json.dumps(card.get('rejects_by_reason', {}), ensure_ascii=False)}")
    click.echo(f"body_leaks: {json.dumps(card.get('body_leaks', {}))}")
    for row in card.get("files_rejected", []):
        click.echo(f"rejected: {row['file']}: {row['reason']} ({row['message']})")
    click.echo(f"card: {stage_dir / 'card.md'}")
