"""End to end on a handmade source directory: outputs, split, duplicates, bad files, card, determinism."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from qihuang.config import ConfigError
from qihuang.corpus import CorpusConfig, build_corpus
from qihuang.corpus import build as build_mod
from qihuang.runs import StageDir, read_jsonl, run_stage
from tests.corpus.samples import make_library


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lib")
    make_library(root)
    return root


def build(src: Path, out: Path, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    opts: dict[str, Any] = {"heldout_books": ["试诊医案"], "passage_chars": 60, "max_passage_chars": 120,
                            "min_chars": 12, "workers": 1, **kw}
    cfg = CorpusConfig(source=src, **opts)
    sd = StageDir(out)
    summary = run_stage(sd, cfg, lambda: build_corpus(cfg, sd))
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    return summary, card


@pytest.fixture(scope="module")
def built(library: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.mktemp("run") / "corpus"
    summary, card = build(library, out)
    return out, summary, card


def test_outputs_and_every_file_accounted_for(built: tuple[Path, dict, dict], library: Path) -> None:
    out, summary, card = built
    for name in ("train.jsonl", "heldout.jsonl", "rejects.jsonl", "card.md", "card.json", "card.png", "done",
                 "summary.json", "config.json", "metrics.jsonl"):
        assert (out / name).exists(), name
    assert (out / "card.png").read_bytes()[:4] == b"\x89PNG"
    files = {f["file"]: f for f in card["files"]}
    assert set(files) == {p.name for p in library.iterdir()}
    assert {n for n, f in files.items() if f["status"] == "rejected"} == {
        "005-坏文件.txt", "006-空文件.txt", "007-乱码.txt", "scan.pdf"}
    assert files["005-坏文件.txt"]["reason"] == "binary" and files["006-空文件.txt"]["reason"] == "empty"
    assert files["007-乱码.txt"]["reason"] == "unknown_encoding" and files["scan.pdf"]["reason"] == "unsupported_type"
    assert summary["books_ingested"] == 6 and summary["books_rejected"] == 4
    md = (out / "card.md").read_text(encoding="utf-8")
    assert "007-乱码.txt" in md and "unknown_encoding" in md
    rejected_files = [r for r in read_jsonl(out / "rejects.jsonl") if r["kind"] == "file"]
    assert len(rejected_files) == 4 and all(r["file"] in r["message"] for r in rejected_files)


def test_passage_records(built: tuple[Path, dict, dict]) -> None:
    out, _, card = built
    train = list(read_jsonl(out / "train.jsonl"))
    keys = {"id", "book", "book_file", "category", "dynasty", "author", "section", "start", "end", "text", "notes"}
    assert train and all(keys <= set(r) for r in train)
    assert len({r["id"] for r in train}) == len(train)
    for r in train:
        cleaned = (out / "books" / f"{Path(r['book_file']).stem}.txt").read_text(encoding="utf-8")
        assert cleaned[r["start"]:r["end"]] == r["text"]
        assert "\\x" not in r["text"] and "<篇名>" not in r["text"] and "属性：" not in r["text"]
    books = {r["book"]: r for r in train}
    assert books["试伤寒论"]["category"] == "伤寒金匮" and books["试伤寒论"]["dynasty"] == "东汉"
    assert books["试药本草"]["category"] == "本草" and books["试药本草"]["section"].startswith("卷一/草部/")
    assert books["试编讲义"]["section"].startswith("第")  # markdown headings are sections
    assert books["试养生说"]["category"] == "养生"  # JSONL title
    assert card["body_leaks"] == {"backslash_x": 0, "pianming_tag": 0, "mulu_tag": 0}


def test_heldout_split(built: tuple[Path, dict, dict]) -> None:
    out, summary, _ = built
    held = list(read_jsonl(out / "heldout.jsonl"))
    train = list(read_jsonl(out / "train.jsonl"))
    assert held and {r["book"] for r in held} == {"试诊医案"}
    assert "试诊医案" not in {r["book"] for r in train}
    assert summary["heldout_books"] == ["试诊医案"]


def test_duplicates_recorded_with_twin_and_overlap(built: tuple[Path, dict, dict]) -> None:
    out, summary, card = built
    dups = [r for r in read_jsonl(out / "rejects.jsonl") if r.get("reason") in ("exact_duplicate", "near_duplicate")]
    assert dups and summary["duplicates_removed"] == len(dups)
    for d in dups:
        assert d["book"] == "注解试伤寒论" and d["twin_book"] == "001-试伤寒论.txt"  # the earlier book keeps it
        assert d["twin"].startswith("001-试伤寒论:")
    pair = card["cross_book_overlap"][0]
    assert (pair["book"], pair["twin_book"]) == ("002-注解试伤寒论.txt", "001-试伤寒论.txt")
    assert 0 < pair["share_of_twin"] <= 1
    # text level: the two base paragraphs of 试伤寒论 reappear inside the commentary, interleaved with notes
    text = card["text_overlap"][0]
    assert (text["book"], text["twin_book"]) == ("002-注解试伤寒论.txt", "001-试伤寒论.txt")
    assert 0.2 < text["share_of_twin"] < 1 and 0.2 < text["share_of_book"] < 1


def test_loads_with_datasets(built: tuple[Path, dict, dict]) -> None:
    from datasets import load_dataset

    out, summary, _ = built
    ds = load_dataset("json", data_files={"train": str(out / "train.jsonl"), "heldout": str(out / "heldout.jsonl")})
    assert ds["train"].num_rows == summary["train_passages"]
    assert ds["heldout"].num_rows == summary["heldout_passages"]


def test_workers_give_the_same_output(library: Path, built: tuple[Path, dict, dict], tmp_path: Path) -> None:
    out, _, _ = built
    build(library, tmp_path / "c", workers=2)
    for name in ("train.jsonl", "heldout.jsonl", "rejects.jsonl"):
        assert (tmp_path / "c" / name).read_bytes() == (out / name).read_bytes()


def test_vanishing_file_and_max_books(library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = build_mod.survey

    def survey_then_delete(source: Path) -> tuple[list[Path], list[Any]]:
        found = real(source)
        victim = tmp_path / "src" / "003-试药本草.txt"
        os.remove(victim)  # disappears after being listed, before it is read
        return found

    src = tmp_path / "src"
    make_library(src)
    monkeypatch.setattr(build_mod, "survey", survey_then_delete)
    summary, card = build(src, tmp_path / "c", max_books=2)
    files = {f["file"]: f for f in card["files"]}
    assert files["003-试药本草.txt"]["reason"] == "vanished"
    assert summary["books_skipped"] == 6  # 8 other candidates, 2 kept
    assert sum(1 for f in files.values() if f["status"] == "skipped") == 6
    assert len(files) == 10  # every input file is in the card
    assert summary["heldout_books"] == ["试诊医案"]


def test_empty_directory_and_missing_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no input files"):
        build_corpus(CorpusConfig(source=tmp_path / "empty"), StageDir(tmp_path / "o"))
    with pytest.raises(ConfigError, match="corpus fetch"):
        build_corpus(CorpusConfig(source=tmp_path / "nope"), StageDir(tmp_path / "o"))
    monkeypatch.setenv("QIHUANG_DATA_ROOT", str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="qihuang corpus fetch") as info:
        build_corpus(CorpusConfig(), StageDir(tmp_path / "o"))
    assert str(tmp_path / "nothing" / "classics") in str(info.value) and "QIHUANG_DATA_ROOT" in str(info.value)


def test_one_variable_for_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qihuang import config
    from qihuang.config import data_file
    from qihuang.corpus.settings import default_source

    (tmp_path / "root" / "classics").mkdir(parents=True)
    (tmp_path / "root" / "lexicon").mkdir()
    (tmp_path / "root" / "lexicon" / "terms.txt").write_text("黄芪\n", encoding="utf-8")
    monkeypatch.setenv("QIHUANG_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("QIHUANG_DATA", str(tmp_path / "ignored"))  # an earlier version's variable: the root wins
    assert default_source() == tmp_path / "root" / "classics"
    assert data_file("lexicon/terms.txt") == tmp_path / "root" / "lexicon" / "terms.txt"
    with pytest.raises(ConfigError, match="QIHUANG_DATA_ROOT"):
        data_file("lexicon/missing.txt")
    monkeypatch.delenv("QIHUANG_DATA_ROOT")
    (tmp_path / "books").mkdir()
    monkeypatch.setenv("QIHUANG_DATA", str(tmp_path / "books"))
    monkeypatch.setattr(config, "_warned", set())
    with pytest.warns(FutureWarning, match="QIHUANG_DATA_ROOT"):  # still honoured without it, with a warning
        assert default_source() == tmp_path / "books"


def test_only_bad_files_fail_after_writing_the_card(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"")
    with pytest.raises(ConfigError, match="none of the 1 input files"):
        build_corpus(CorpusConfig(source=src), StageDir(tmp_path / "o"))
    card = json.loads((tmp_path / "o" / "card.json").read_text(encoding="utf-8"))
    assert card["files"][0]["reason"] == "empty"


def test_config_checks() -> None:
    with pytest.raises(ConfigError):
        CorpusConfig(passage_chars=100, max_passage_chars=50)
    with pytest.raises(ConfigError):
        CorpusConfig(category_map=["no-equals-sign"])
    with pytest.raises(ConfigError):
        CorpusConfig(workers=0)


def test_notes_modes() -> None:
    rec = {"text": "甲乙丙丁。", "notes": [{"offset": 2, "text": "注", "kind": "note"}], "id": "x"}
    assert build_mod._notes_mode(rec, "inline") == {"text": "甲乙注丙丁。", "notes": [], "id": "x"}
    assert build_mod._notes_mode(rec, "drop") == {"text": "甲乙丙丁。", "notes": [], "id": "x"}
