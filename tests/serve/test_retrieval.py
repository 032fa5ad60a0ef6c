"""Retrieval: BM25 ranking over invented passages, cached index reload, citations with quoted spans, prompt
assembly within the context budget, and `qihuang search`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qihuang.rag import citations_for, prepare_prompt
from qihuang.retrieval import PassageIndex, best_span, query_tokens


@pytest.mark.parametrize("query, best", [
    ("桂枝汤治什么？", "test-003"), ("无汗而喘用什么方？", "test-004"), ("春天应该怎样调养精神", "test-001"),
    ("脉沉迟说明什么", "test-002"), ("人参的功效", "test-005"), ("黄连", "test-006"),
])
def test_search_ranks_the_right_passage(index: PassageIndex, query: str, best: str) -> None:
    hits = index.search(query, k=3)
    assert hits and hits[0].passage.id == best
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_no_match_and_k(index: PassageIndex) -> None:
    assert index.search("zzz qqq", k=3) == []
    assert index.search("", k=3) == []
    assert len(index.search("桂枝 麻黄 人参 黄连 脉", k=10)) <= 6


def test_cached_index_loads_fast_and_ranks_the_same(passages_file: Path, index: PassageIndex) -> None:
    t0 = time.perf_counter()
    again = PassageIndex.open(passages_file)
    assert time.perf_counter() - t0 < 1.0  # no jieba, no re-indexing
    assert again.load_seconds < 1.0
    for q in ("桂枝汤", "寒在里", "人参"):
        assert [h.passage.id for h in again.search(q, 3)] == [h.passage.id for h in index.search(q, 3)]


def test_query_tokens_use_index_vocab(index: PassageIndex, passages_file: Path) -> None:
    toks = query_tokens("桂枝汤主治", index.vocab, index.segmentation)
    assert index.segmentation == "char" and {"桂", "桂枝", "枝汤"} <= set(toks)
    assert all(t in index.vocab for t in toks) and "主治" not in toks  # 主治 is in no passage
    words = PassageIndex.open(passages_file, segmentation="jieba", lexicon=None)
    toks = query_tokens("桂枝汤主治", words.vocab, words.segmentation)
    assert "桂枝汤" in toks and all(t in words.vocab for t in toks)
    assert words.search("桂枝汤治什么？", 1)[0].passage.id == "test-003"


def test_best_span_and_citations(index: PassageIndex) -> None:
    text = index.by_id["test-002"].text
    s, e = best_span(text, "寒在里")
    assert "寒在里" in text[s:e] and e - s < len(text)
    hits = index.search("桂枝汤", 2)
    cites = citations_for(hits, "桂枝汤", "答：桂枝汤主营卫不和[1]。")
    c = cites[0]
    assert c["id"] == "test-003" and c["title"] == "《拟方汇编·桂枝汤条》" and c["cited"]
    assert c["quote"] in hits[0].passage.text and c["quote_end"] - c["quote_start"] == len(c["quote"])
    assert not cites[1]["cited"]


def test_prepare_prompt_puts_passages_with_ids(engine: Any, index: PassageIndex) -> None:
    prep = prepare_prompt(engine, [{"role": "user", "content": "桂枝汤治什么？"}], index, 3, 160, 32)
    assert prep.hits[0].passage.id == "test-003"
    assert "[1]《拟方汇编·桂枝汤条》" in prep.prompt and "问题：桂枝汤治什么？" in prep.prompt
    assert prep.prompt_tokens == engine.prompts.count_tokens(prep.prompt)
    # a max_tokens that leaves room for less drops the lowest-ranked passages first
    room = engine.max_context - prep.prompt_tokens + 5
    smaller = prepare_prompt(engine, [{"role": "user", "content": "桂枝汤治什么？"}], index, 3, 160, room)
    assert len(smaller.hits) < len(prep.hits) and smaller.prompt_tokens + room <= engine.max_context
    none = prepare_prompt(engine, [{"role": "user", "content": "桂枝汤"}], None, 3, 160, 8)
    assert none.hits == [] and "《拟方汇编" not in none.prompt
    # quotations may copy the cited passage as the prompt shows it (据《X》：「…」 quotes X), the first one its
    # sentences the question matches best (what the answer guard would quote); nothing closed-book
    from qihuang.answer_guard import fallback_quote, lead_quote
    from qihuang.quotes import Quotable

    assert prep.ground.cited is not None and len(prep.quotable.sources) == 1
    assert f"{prep.ground.cited.title}{prep.quotable.sources[0]}" in prep.prompt
    assert prep.quotable.lead == lead_quote(prep.ground.cited, "桂枝汤治什么？") != ""
    assert prep.quotable.lead in prep.ground.cited.text
    assert fallback_quote(prep.ground.cited, "桂枝汤治什么？") == f"原文：「{prep.quotable.lead}」"
    assert none.quotable == Quotable() and not none.quotable


def test_answer_chunks_hand_the_engine_what_quotations_may_copy(engine: Any, index: PassageIndex,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from qihuang.rag import answer_chunks
    from qihuang.serve.engine import SamplingParams

    prep = prepare_prompt(engine, [{"role": "user", "content": "桂枝汤治什么？"}], index, 3, 160, 16)
    seen: list[Any] = []
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda **kw: (seen.append(kw["params"].quotes), real(**kw))[1])
    for verbatim in (True, False):
        list(answer_chunks(engine, prep, SamplingParams(max_new_tokens=4), verbatim=verbatim))
    assert seen == [prep.quotable, None]


def test_search_cli(passages_file: Path) -> None:
    from qihuang.serve.cli import search_cli

    out = CliRunner().invoke(search_cli, ["麻黄汤 无汗", "--passages", str(passages_file), "--k", "2", "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines() if line.startswith("{")]
    assert rows[0]["id"] == "test-004" and rows[0]["rank"] == 1 and len(rows) <= 2
    text = CliRunner().invoke(search_cli, ["人参", "--passages", str(passages_file)])
    assert text.exit_code == 0 and "《假托本草·人参》" in text.output
    bad = CliRunner().invoke(search_cli, ["人参", "--passages", str(passages_file), "--k", "0"])
    assert bad.exit_code != 0


def test_run_dir_passages(tmp_path: Path, passages_file: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.jsonl").write_bytes(passages_file.read_bytes())
    idx = PassageIndex.open(tmp_path)
    assert len(idx.passages) == 6
    from qihuang.config import ConfigError

    with pytest.raises(ConfigError):
        PassageIndex.open(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n', encoding="utf-8")
    with pytest.raises(ConfigError):
        PassageIndex.open(bad)
