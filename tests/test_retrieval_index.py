"""The whole-library index: char n-gram ranking, a cache keyed by content (not path), fingerprint checks, the
`index` stage and `qihuang index build`, run-dir resolution, and the corpus stage's library.jsonl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qihuang.bm25 import char_keys, char_tokens, term_key
from qihuang.config import ConfigError
from qihuang.index import IndexConfig, build_index, index_cli
from qihuang.retrieval import PassageIndex, resolve_passages
from qihuang.runs import StageDir

# Invented passages in a classical register (not quoted from any book).
PASSAGES = [
    {"id": "a:0-40", "book": "虚拟脉诀", "section": "浮脉",
     "text": "浮脉轻手乃得，重按则减，主表证，有力为表实。"},
    {"id": "a:40-80", "book": "虚拟脉诀", "section": "沉脉",
     "text": "沉脉重手乃得，轻取不应，主里证，无力为里虚。"},
    {"id": "b:0-40", "book": "假设方论", "section": "四逆",
     "text": "四逆之方，附子干姜甘草，回阳救逆，手足厥冷者宜之。"},
    {"id": "b:40-80", "book": "假设方论", "section": "白虎",
     "text": "白虎之方，石膏知母粳米甘草，清气分大热，烦渴者宜之。"},
    {"id": "c:0-30", "book": "拟作本草", "section": "附子",
     "text": "附子辛甘大热，有毒，回阳补火，散寒除湿。"},
]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_char_tokens_and_vectorised_keys_agree() -> None:
    assert char_tokens("附子 DNA 回阳") == ["附", "子", "附子", "dna", "回", "阳", "回阳"]
    texts = ["附子回阳，Rx 救逆", "石膏"]
    keys, docs = char_keys(texts)
    want = sorted((term_key(t), d) for d, text in enumerate(texts) for t in char_tokens(text))
    assert sorted(zip(keys.tolist(), docs.tolist())) == want


@pytest.mark.parametrize("query, best", [("重按则减", "a:0-40"), ("轻取不应，主里证", "a:40-80"),
                                         ("手足厥冷用什么方", "b:0-40"), ("石膏知母", "b:40-80"),
                                         ("附子的性味", "c:0-30")])
def test_char_index_ranks_the_right_passage(home: Path, tmp_path: Path, query: str, best: str) -> None:
    idx = PassageIndex.open(write(tmp_path / "p.jsonl", PASSAGES), segmentation="char")
    hits = idx.search(query, 3)
    assert idx.segmentation == "char" and hits[0].passage.id == best
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score > 0 for a, b in zip(hits, hits[1:]))
    assert idx.search("zzz", 3) == [] and idx.search("附子", 0) == []


def test_cache_is_keyed_by_content_not_path(home: Path, tmp_path: Path) -> None:
    first = PassageIndex.open(write(tmp_path / "run1" / "corpus" / "library.jsonl", PASSAGES))
    assert first.built and first.meta["source"] == "library.jsonl" and len(first.meta["fingerprint"]) == 64
    other = tmp_path / "elsewhere" / "copy.jsonl"
    other.parent.mkdir()
    shutil.copy(tmp_path / "run1" / "corpus" / "library.jsonl", other)
    again = PassageIndex.open(other)
    assert not again.built and again.meta["dir"] == first.meta["dir"] and again.source == other
    assert len(list((home / "indexes").iterdir())) == 1
    changed = write(tmp_path / "run1" / "corpus" / "library.jsonl", PASSAGES[:4])
    assert PassageIndex.open(changed).built and len(list((home / "indexes").iterdir())) == 2


def test_fingerprint_mismatch_and_missing_index_dir(home: Path, tmp_path: Path) -> None:
    good = PassageIndex.open(write(tmp_path / "lib.jsonl", PASSAGES))
    folder = Path(good.meta["dir"])
    assert PassageIndex.open(tmp_path / "lib.jsonl", index_dir=folder).search("石膏", 1)[0].passage.id == "b:40-80"
    other = write(tmp_path / "other.jsonl", PASSAGES[:2])
    with pytest.raises(ConfigError) as err:
        PassageIndex.open(other, index_dir=folder)
    msg = str(err.value)
    assert "lib.jsonl" in msg and "other.jsonl" in msg and good.meta["fingerprint"][:12] in msg
    with pytest.raises(ConfigError, match="no such folder"):
        PassageIndex.open(other, index_dir=tmp_path / "nope")


def test_index_stage_and_run_dir_resolution(home: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    write(run / "corpus" / "train.jsonl", PASSAGES[:3])
    summary = build_index(IndexConfig(), run / "corpus", StageDir(run / "index"))
    assert summary["source"] == "train.jsonl" and summary["passages"] == 3 and not summary["reused"]
    assert summary["probe_found_itself"]
    assert Path(summary["cache_dir"]).parent == home / "indexes"
    built = json.loads((Path(summary["cache_dir"]) / "meta.json").read_text(encoding="utf-8"))
    assert (summary["build_seconds"], summary["peak_rss_mb"]) == (built["build_seconds"], built["peak_rss_mb"])
    assert summary["peak_rss_mb"] > 20  # a Python process with numpy loaded, in MB (not KB or bytes)
    choice = json.loads((run / "index" / "index.json").read_text(encoding="utf-8"))
    assert choice == {"passages": "train.jsonl", "segmentation": "char", "cache_dir": summary["cache_dir"],
                      "fingerprint": summary["fingerprint"]}
    assert resolve_passages(run) == run / "corpus" / "train.jsonl"  # the index stage's choice wins
    write(run / "corpus" / "library.jsonl", PASSAGES)
    again = build_index(IndexConfig(segmentation="char"), run / "corpus", StageDir(run / "index"))
    assert again["source"] == "library.jsonl" and again["passages"] == 5
    assert len(PassageIndex.open(run).passages) == 5 and resolve_passages(run).name == "library.jsonl"
    (run / "index" / "index.json").unlink()
    assert resolve_passages(run).name == "library.jsonl"
    with pytest.raises(ConfigError, match="none of .*run the corpus stage first"):
        build_index(IndexConfig(), tmp_path / "missing", StageDir(tmp_path / "x"))


def test_index_build_cli(home: Path, tmp_path: Path) -> None:
    write(tmp_path / "run" / "corpus" / "library.jsonl", PASSAGES)
    out = CliRunner().invoke(index_cli, ["build", "--corpus", str(tmp_path / "run" / "corpus"),
                                         "--segmentation", "jieba"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["passages"] == 5 and summary["segmentation"] == "jieba"
    assert (tmp_path / "run" / "index" / "done").exists()
    assert PassageIndex.open(tmp_path / "run").segmentation == "jieba"
    bad = CliRunner().invoke(index_cli, ["build", "--corpus", str(tmp_path / "none")])
    assert bad.exit_code != 0 and "none of" in bad.output


def test_corpus_library_holds_every_book(shared_data: Path, tmp_path: Path) -> None:
    from qihuang.corpus import CorpusConfig, build_corpus

    src = tmp_path / "books"
    src.mkdir()
    names = ["196-产后十八论.txt", "262-接骨手法.txt", "651-十二經補瀉溫涼引經藥歌.txt"]
    for name in names:
        shutil.copyfile(shared_data / "classics" / name, src / name)  # links outside the source are refused
    cfg = CorpusConfig(source=src, max_books=1, heldout_books=["接骨手法"], workers=1, write_books=False)
    summary = build_corpus(cfg, StageDir(tmp_path / "corpus"))
    read = {n: [json.loads(line) for line in open(tmp_path / "corpus" / n, encoding="utf-8")]
            for n in ("train.jsonl", "heldout.jsonl", "library.jsonl")}
    lib_books = {r["book_file"] for r in read["library.jsonl"]}
    assert lib_books == set(names) and summary["library_books"] == 3
    assert {r["book_file"] for r in read["heldout.jsonl"]} == {"262-接骨手法.txt"}
    assert len({r["book_file"] for r in read["train.jsonl"]}) == 1 and summary["books_skipped"] == 1
    by_id = {r["id"]: r for r in read["library.jsonl"]}
    for r in read["train.jsonl"] + read["heldout.jsonl"]:
        assert {k: by_id[r["id"]][k] for k in ("book", "section", "text", "start", "end")} == \
               {k: r[k] for k in ("book", "section", "text", "start", "end")}
    assert summary["library_passages"] == len(read["library.jsonl"]) > len(read["train.jsonl"]) + len(
        read["heldout.jsonl"])
    off = build_corpus(CorpusConfig(source=src, max_books=1, heldout_books=[], library=False, workers=1,
                                    write_books=False), StageDir(tmp_path / "corpus2"))
    assert not (tmp_path / "corpus2" / "library.jsonl").exists() and "library_passages" not in off


def test_jieba_segmenter_is_cached_per_lexicon(tmp_path: Path) -> None:
    from qihuang.bm25 import jieba_segmenter

    lex = tmp_path / "lex.txt"
    lex.write_text("虚拟脉诀 10 n\n", encoding="utf-8")
    plain, words = jieba_segmenter(None), jieba_segmenter(lex)
    assert plain is jieba_segmenter(None) and words is jieba_segmenter(lex) and plain is not words
    assert "虚拟脉诀" in words.lcut("虚拟脉诀", HMM=False) and "虚拟脉诀" not in plain.lcut("虚拟脉诀", HMM=False)


def test_fingerprint_is_rehashed_only_when_the_file_changes(home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import os

    from qihuang import retrieval

    calls: list[Path] = []
    real = retrieval.sha256_file
    monkeypatch.setattr(retrieval, "sha256_file", lambda p: calls.append(Path(p)) or real(p))
    path = write(tmp_path / "lib.jsonl", PASSAGES)
    first = PassageIndex.open(path)
    assert first.meta["fingerprint"] == hashlib.sha256(path.read_bytes()).hexdigest() and len(calls) == 1
    assert not PassageIndex.open(path).built and len(calls) == 1  # size, mtime, inode unchanged: not rehashed
    data = path.read_bytes().replace("浮脉".encode(), "弦脉".encode())  # same size, different content
    path.write_bytes(data)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = PassageIndex.open(path)
    assert len(calls) == 2 and again.built and again.meta["fingerprint"] == hashlib.sha256(data).hexdigest()
    assert again.meta["dir"] != first.meta["dir"] and sorted(p.name for p in (home / "indexes").iterdir()) == \
        sorted(Path(d).name for d in (first.meta["dir"], again.meta["dir"]))


def test_building_an_index_sweeps_temporaries_of_killed_builds(home: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    cache = home / "indexes"
    (cache / f".0123456789abcdef.tmp-{dead}-1").mkdir(parents=True)
    (cache / f".0123456789abcdef.tmp-{dead}-1" / "passages.jsonl").write_text("partial", encoding="utf-8")
    live = cache / f".fedcba9876543210.tmp-{os.getpid()}-1"  # this process's own: maybe being written, kept
    live.mkdir()
    idx = PassageIndex.open(write(tmp_path / "lib.jsonl", PASSAGES))
    assert idx.built and sorted(p.name for p in cache.iterdir()) == sorted([live.name, Path(idx.meta["dir"]).name])


SCOPED = [
    {"id": "s:0", "book": "虚拟脉诀精义大全", "section": "总论", "text": "脉有浮沉。"},
    {"id": "s:1", "book": "虚拟脉诀精义大全", "section": "杂论",
     "text": "病者面色青黄，时作冷笑，" + "其脉弦细而数，饮食减少，夜卧不安，宜养心安神，不可妄攻。" * 3},
    {"id": "t:0", "book": "拟作医话", "section": "笑", "text": "冷笑者，心气不足也。"},
]


def test_a_named_book_scopes_the_search(home: Path, tmp_path: Path) -> None:
    """The book's title no longer pulls its shortest passage to the top: the question's other words are searched
    among the named book's passages (a partial name covers the books containing it); unknown books and titles
    with nothing else to search fall back to the whole index."""
    idx = PassageIndex.open(write(tmp_path / "p.jsonl", SCOPED), segmentation="char")
    folder = Path(idx.meta["dir"])
    assert (folder / "books.npy").exists() and idx.scope.names == ["虚拟脉诀精义大全", "拟作医话"]
    assert idx.search("什么叫冷笑？请依据《虚拟脉诀精义大全》回答。", 3, scoped=False)[0].passage.id != "s:1"
    for query in ("什么叫冷笑？请依据《虚拟脉诀精义大全》回答。", "《虚拟脉诀》中冷笑指什么？"):
        assert [h.passage.id for h in idx.search(query, 3)] == ["s:1"]
    assert [h.passage.id for h in idx.search("《无此书》冷笑", 1)] == [h.passage.id for h in idx.search("冷笑", 1)]
    assert idx.search("《虚拟脉诀精义大全》", 3)  # nothing else to search: the whole index, titles included
    for name in ("books.npy", "books.json"):  # an index folder from before scopes were saved
        (folder / name).unlink()
    old = PassageIndex.open(tmp_path / "p.jsonl", segmentation="char")
    assert old.scope.names == idx.scope.names and (folder / "books.npy").exists()
