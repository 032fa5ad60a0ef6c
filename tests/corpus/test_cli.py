"""`qihuang corpus build|card|manifest` through click, with flags generated from CorpusConfig."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from qihuang.corpus.cli import corpus_cli
from tests.corpus.samples import make_library


def test_build_and_card_commands(tmp_path: Path) -> None:
    make_library(tmp_path / "src")
    out = tmp_path / "run" / "corpus"
    runner = CliRunner()
    res = runner.invoke(corpus_cli, ["build", "--source", str(tmp_path / "src"), "--out", str(out),
                                     "--heldout-books", "试诊医案", "--passage-chars", "60", "--max-passage-chars",
                                     "120", "--min-chars", "12", "--workers", "1", "--no-dedup"])
    assert res.exit_code == 0, res.output
    assert "train_passages" in res.output and (out / "done").exists()
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["dedup"] is False and cfg["heldout_books"] == ["试诊医案"]
    again = runner.invoke(corpus_cli, ["build", "--source", str(tmp_path / "src"), "--out", str(out)])
    assert again.exit_code == 0 and "already built" in again.output
    card = runner.invoke(corpus_cli, ["card", str(out)])
    assert card.exit_code == 0 and "books_ingested: 6" in card.output and "007-乱码.txt" in card.output


def test_help_shows_field_docs_and_bad_values() -> None:
    runner = CliRunner()
    res = runner.invoke(corpus_cli, ["build", "--help"])
    assert res.exit_code == 0 and "--passage-chars" in res.output and "Target passage length" in res.output
    bad = runner.invoke(corpus_cli, ["build", "--passage-chars", "100", "--max-passage-chars", "50"])
    assert bad.exit_code != 0 and "max_passage_chars" in bad.output


def test_missing_source_message(tmp_path: Path) -> None:
    res = CliRunner().invoke(corpus_cli, ["build", "--source", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "corpus fetch" in res.output


def test_manifest_command(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("甲", encoding="utf-8")
    res = CliRunner().invoke(corpus_cli, ["manifest", str(tmp_path)])
    assert res.exit_code == 0
    line = (tmp_path / "MANIFEST.sha256").read_text(encoding="utf-8").strip()
    assert line.endswith("  a.txt") and len(line.split()[0]) == 64
