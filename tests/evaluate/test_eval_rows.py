"""The eval stage's held-out-book QA rows end to end on the tiny model: closed-book and retrieval rows, citation /
degeneration / declining metrics with paired CIs, off-topic probe, report tables and resume. Answers come from a
scripted stand-in for `generate_batch` (so the figures are known); one row also runs the real batched decoder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from qihuang.evaluate import EvalConfig, evaluate_models
from qihuang.evaluate.offtopic import OFFTOPIC_QUESTIONS
from qihuang.rag import NOT_COVERED, QUESTION_PREFIX
from qihuang.runs import StageDir

from .conftest import write_jsonl
from .test_answers_heldout_qa import _heldout

SFT_SYSTEM = "你是中医古籍助手。"


def _scripted(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
              params: Any = None, progress: Any = None, quotes: Any = None, until: Any = None,
              batch_tokens: int = 0) -> list[str]:
    """base: loops with passages, says nothing closed-book, invents a source off topic; sft (its prompts carry the
    saved system prompt): cites passage [1] with passages, declines off topic. Every prompt with passages comes with
    text its quotations may copy (verbatim quotes on), one closed-book with none; every answer with where the
    guard would stop it (the base's loop is stopped there)."""
    out = []
    assert quotes is not None and len(quotes) == len(prompts)
    assert until is not None and len(until) == len(prompts) and until[0]("一两一两一两一两一两") and not until[0]("")
    for p, shown in zip(prompts, quotes, strict=True):
        assert bool(shown) == (QUESTION_PREFIX in p) and all(t in p for t in shown.sources)
        sft = SFT_SYSTEM in p
        offtopic = any(q in p for q in OFFTOPIC_QUESTIONS)
        if offtopic:
            out.append(NOT_COVERED if sft else "见《黄帝内经》。")
        elif QUESTION_PREFIX in p:
            out.append("据[1]所载。" if sft else "一两一两一两一两")
        else:
            out.append("不详。" if sft else "")
    if progress:
        progress(len(out), len(out))
    return out


@pytest.fixture()
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qihuang.decoding.generate_batch", _scripted)


def _sft_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with a saved default system prompt (as the sft stage writes it)."""
    d = tmp_path / "sft_model"
    d.mkdir()
    for f in tiny_model_dir.iterdir():
        (d / f.name).symlink_to(f)
    (d / "qihuang_template.json").write_text(json.dumps({"system_prompt": SFT_SYSTEM}), encoding="utf-8")
    return d


def test_rows_end_to_end(tiny_model_dir: Path, tmp_path: Path, scripted: None) -> None:
    heldout = _heldout(tmp_path)
    cfg = EvalConfig(mcq_files=[], bpc_max_chars=0, heldout_qa_n=12, lexicon="", qa_max_new_tokens=8,
                     bootstrap=200)
    out = StageDir(tmp_path / "eval")
    models = {"base": tiny_model_dir, "sft": _sft_dir(tiny_model_dir, tmp_path)}
    evaluate_models(cfg, models, heldout, None, out, index=heldout)
    doc = json.loads((out.path / "results.json").read_text(encoding="utf-8"))
    assert doc["rows"] == [["base", "closed"], ["base", "rag"], ["sft", "rag"], ["sft", "closed"]]
    qa = [json.loads(x) for x in (out.path / "heldout_books_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert 0 < len(qa) <= 12 and {r["book"] for r in qa} <= {"甲医书", "乙药书"}
    base, sft = doc["models"]["base"]["rows"], doc["models"]["sft"]["rows"]
    assert base["closed"]["degenerate"] == 1.0 and base["closed"]["citation_book"] == 0.0  # empty answers
    assert base["closed"]["echo"] == 1.0 and sft["closed"]["echo"] == 0.0  # empty answers say nothing of their own
    # with retrieval the base's empty answers reach users as the cited passage's quote (the answer guard)
    assert base["rag"]["model_degenerate"] == 1.0 and base["rag"]["guard_fallback"] == 1.0
    assert base["rag"]["degenerate"] == 0.0 and sft["rag"]["degenerate"] == 0.0
    assert sft["rag"]["vs_base"]["against"] == "base:rag"
    assert sft["rag"]["vs_base"]["degenerate"]["diff"] == 0.0
    # the model's own answers are scored too (the base's are empty: only the system's opening scores)
    assert base["rag"]["model_rouge_l"] < base["rag"]["rouge_l"]  # its citation opening alone, against a quote
    assert "model_rouge_l" in sft["rag"]["vs_base"]
    assert sft["closed"]["vs_base"]["against"] == "base:closed" and sft["closed"]["declined"] == 0.0
    # sft cites [1]: right book exactly when the first hit is from the gold book
    preds = [json.loads(x) for x in (out.path / "predictions" / "sft__rows__rag.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert len(preds) == len(qa) and all(p["hits"] for p in preds)
    assert [p["right_book"] for p in preds] == [p["hits"][0]["book"] == p["book"] for p in preds]
    assert sft["rag"]["citation_book"] == pytest.approx(sum(p["right_book"] for p in preds) / len(preds))
    assert sft["rag"]["citation_book"] > 0 and sft["rag"]["gold_retrieved"] > 0
    assert set(sft["rag"]["by_type"]) == {r["task_type"] for r in qa}
    # the relevance gate declines every off-topic question before either model sees it: nothing invented
    for lb in models:
        assert doc["models"][lb]["offtopic"] == pytest.approx(
            {"n": 30, "invented_citation": 0.0, "declined": 1.0, "degenerate": 0.0, "with_hits": 0.0})
    off = {lb: [json.loads(x) for x in (out.path / "predictions" / f"{lb}__offtopic.jsonl").read_text(
        encoding="utf-8").splitlines()] for lb in models}
    assert all(p["answer"] == NOT_COVERED and p["gate"] for p in off["base"])
    # every held-out question names a book or quotes one, so none is declined, and each answer opens with a citation
    assert all(p["gate"] and p["opening"].startswith("据《") for p in preds)
    assert doc["files"]["index_training_only"] is False
    md = (out.path / "report.md").read_text(encoding="utf-8")
    for s in ("### Held-out-book QA: the system users get", "| **base** | closed-book |", "| **sft** | + retrieval |",
              "### Held-out-book QA by question type: sft, + retrieval", "Off-topic (30 questions",
              "+0.0 [+0.0, +0.0]", "model's own ROUGE-L / faithfulness %"):
        assert s in md, s
    assert "difference to **base** in the same condition" in md
    # resumed stage (the passages file only touched): every part and the QA set reused, nothing generated again
    os.utime(heldout, (time.time() + 5, time.time() + 5))
    n_before = len(out.metrics().read())
    evaluate_models(cfg, models, heldout, None, out, index=heldout)
    logged = out.metrics().read()[n_before:]
    events = [m["event"] for m in logged]
    assert events.count("model_reused") == 2 and "model_load" not in events and "qa_row" not in events
    assert [m["reused"] for m in logged if m["event"] == "heldout_books_qa"] == [True]
    again = json.loads((out.path / "results.json").read_text(encoding="utf-8"))["models"]
    assert _figures(again) == _figures(doc["models"])


def _figures(models: dict[str, Any]) -> dict[str, Any]:
    return {lb: {k: v for k, v in m.items() if k != "seconds"} for lb, m in models.items()}


def test_rows_real_decoder_and_no_index(tiny_model_dir: Path, tmp_path: Path) -> None:
    heldout = _heldout(tmp_path)
    extra = write_jsonl(tmp_path / "qa.jsonl", [{"question": "何谓阴阳交？", "reference": "汗出而热不退。"}])
    cfg = EvalConfig(mcq_files=[], bpc_max_chars=0, heldout_qa_n=3, lexicon="", qa_max_new_tokens=3,
                     qa_rows=["*:closed", "*:rag"], offtopic=False, bootstrap=200)
    out = StageDir(tmp_path / "eval")
    evaluate_models(cfg, {"base": tiny_model_dir}, heldout, extra, out)  # no index: retrieval rows skipped
    doc = json.loads((out.path / "results.json").read_text(encoding="utf-8"))
    r = doc["models"]["base"]
    assert list(r["rows"]) == ["closed"] and r["rows"]["closed"]["n"] == 3 and "offtopic" not in r
    assert r["qa"]["heldout_qa"]["n"] == 1
    assert any(m["event"] == "rows_skipped" for m in out.metrics().read())
    # the real decoder's answers are scored: one record per question, every per-answer field, vectors aligned
    qa = [json.loads(x) for x in (out.path / "heldout_books_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    preds = [json.loads(x) for x in (out.path / "predictions" / "base__rows__closed.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert [p["question"] for p in preds] == [q["question"] for q in qa]
    for p in preds:
        assert isinstance(p["answer"], str) and p["answer"] == p["answer"].strip() and p["hits"] == []
        assert {"rouge_l", "bleu4", "length", "degenerate", "declined", "cited", "task_type"} <= set(p)
        assert 0.0 <= p["rouge_l"] <= 1.0 and p["length"] == len("".join(p["answer"].split()))
    row = r["rows"]["closed"]
    assert set(row["by_type"]) == {q["task_type"] for q in qa} and row["gold_retrieved"] is None
    assert row["degenerate"] == pytest.approx(sum(p["degenerate"] for p in preds) / 3)
    part = json.loads((out.path / "parts" / "base" / "rows__heldout_books__closed.json").read_text(encoding="utf-8"))
    assert all(len(v) == 3 for v in part["value"]["vectors"].values())
    assert part["value"]["vectors"]["rouge_l"] == [p["rouge_l"] for p in preds]


def test_progress_and_against_label(tiny: tuple[Any, Any]) -> None:
    from qihuang.decoding import generate_batch
    from qihuang.evaluate.report_rows import rows_markdown

    calls: list[tuple[int, int]] = []
    answers = generate_batch(*tiny, ["一", "二二", "三三三"], 2, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers) and calls[-1] == (3, 3)
    # merged results: the difference is labelled with the row it was measured against, not the first model
    row = {"n": 1, "n_with_source": 1, "n_attribution": 0, "rouge_l": 0.5, "bleu4": 1.0, "faithfulness": None,
           "citation_book": None, "citation_section": None, "citation_book_attribution": None,
           "citation_section_attribution": None, "degenerate": 0.0, "declined": 0.0, "length": 3.0}
    diff = {"diff": 0.1, "lo": 0.0, "hi": 0.2, "p_not_better": 0.1}
    results = {"other": {"rows": {"rag": row}}, "base": {"rows": {"rag": row}},
               "sft": {"rows": {"rag": {**row, "vs_base": {"against": "base:rag", "rouge_l": diff}}}}}
    md = "\n".join(rows_markdown(results, [], {}))
    assert "difference to **base** in the same condition" in md and "**other** in the same" not in md
    assert "50.0 (+10.0 [+0.0, +20.0])" in md
