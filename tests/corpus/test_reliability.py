"""Regression tests of issue #16 (corpus): same names in different folders, undecodable file names, links and
hidden files, and temporaries left by a killed build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from qihuang.corpus import CorpusConfig, build_corpus
from qihuang.runs import StageDir, read_jsonl
from tests.training.helpers import invented_text


def _book(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(invented_text(8, seed * 10 + i) for i in range(4)) + "\n", encoding="utf-8")


def _build(src: Path, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = CorpusConfig(source=src, passage_chars=60, max_passage_chars=120, min_chars=12, workers=1, dedup=False)
    summary = build_corpus(cfg, StageDir(out))
    return summary, json.loads((out / "card.json").read_text(encoding="utf-8"))


def _reasons(card: dict[str, Any]) -> dict[str, str]:
    return {r["file"]: r["reason"] for r in card["files_rejected"]}


def test_same_name_in_two_folders_keeps_both_books_apart(tmp_path: Path) -> None:
    # defect 8: books/<name>.txt was overwritten and passage ids collided
    src = tmp_path / "src"
    _book(src / "a" / "本草.txt", 1)
    _book(src / "b" / "本草.txt", 2)
    summary, _ = _build(src, tmp_path / "out")
    assert summary["books_ingested"] == 2
    rows = list(read_jsonl(tmp_path / "out" / "train.jsonl")) + list(read_jsonl(tmp_path / "out" / "heldout.jsonl"))
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        book = tmp_path / "out" / "books" / f"{Path(r['book_file']).with_suffix('').as_posix()}.txt"
        assert book.read_text(encoding="utf-8")[r["start"]:r["end"]] == r["text"]
    assert {r["book_file"] for r in rows} == {"a/本草.txt", "b/本草.txt"}


def test_invalid_utf8_file_name_is_rejected_not_fatal(tmp_path: Path) -> None:
    # defect 9: a name with invalid UTF-8 bytes aborted the build with UnicodeEncodeError
    src = tmp_path / "src"
    _book(src / "good.txt", 3)
    bad = os.fsencode(str(src)) + b"/bad\xff\xfe.txt"
    with open(bad, "w", encoding="utf-8") as fh:
        fh.write(invented_text(20, 4))
    summary, card = _build(src, tmp_path / "out")
    assert summary["books_ingested"] == 1
    assert _reasons(card) == {"bad\ufffd\ufffd.txt": "invalid_file_name"}
    rows = [r for r in read_jsonl(tmp_path / "out" / "rejects.jsonl") if r["kind"] == "file"]
    assert [(r["file"], r["status"], r["reason"]) for r in rows] == [("bad\ufffd\ufffd.txt", "rejected",
                                                                     "invalid_file_name")]
    assert rows[0]["message"].startswith("bad\ufffd\ufffd.txt: ") and "UTF-8" in rows[0]["message"]


def test_links_and_hidden_files_are_accounted_for(tmp_path: Path) -> None:
    # defect 10: a link to /etc/passwd was read; a dangling link and .hidden.txt vanished without a trace
    src = tmp_path / "src"
    _book(src / "good.txt", 5)
    secret = tmp_path / "outside.txt"
    secret.write_text("SECRET-OUTSIDE " * 50, encoding="utf-8")
    (src / "leak.txt").symlink_to(secret)
    (src / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    (src / "inside.txt").symlink_to(src / "good.txt")
    (src / ".hidden.txt").write_text(invented_text(20, 6), encoding="utf-8")
    (src / ".git").mkdir()
    (src / ".git" / "x.txt").write_text("x", encoding="utf-8")
    (src / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    summary, card = _build(src, tmp_path / "out")
    assert _reasons(card) == {"leak.txt": "link_outside_source", "dangling.txt": "dangling_link",
                              ".hidden.txt": "hidden", ".git": "hidden", "dirlink": "link_to_folder"}
    assert summary["books_ingested"] == 2  # good.txt and the link to it inside the source folder
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert b"SECRET-OUTSIDE" not in f.read_bytes(), f


def test_temporaries_of_a_killed_build_are_removed(tmp_path: Path) -> None:
    # defect 11: kill -9 left .train.jsonl.tmp-* and .books.tmp-* that no rerun removed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / "out"
    out.mkdir()
    (out / f".train.jsonl.tmp-{pid}-123").write_text("partial", encoding="utf-8")
    (out / f".books.tmp-{pid}-456").mkdir()
    (out / f".books.tmp-{pid}-456" / "x.txt").write_text("partial", encoding="utf-8")
    live = out / f".heldout.jsonl.tmp-{os.getpid()}-1"  # this process's own: maybe being written, kept
    live.write_text("", encoding="utf-8")
    src = tmp_path / "src"
    _book(src / "good.txt", 7)
    _build(src, out)
    assert sorted(p.name for p in out.glob(".*")) == [live.name]
