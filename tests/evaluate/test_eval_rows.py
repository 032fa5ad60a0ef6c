"""The eval stage's held-out-book QA rows end to end on the tiny model: closed-book and retrieval rows, citation /
degeneration / declining metrics with paired CIs, off-topic probe, report tables and resume. Answers come from a
scripted stand-in for `generate_batch` (so the figures are known); one row also runs the real batched decoder."""

from __future__ import annotations

import json
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
              params: Any = None) -> list[str]:
    """base: loops with passages, says nothing closed-book, invents a source off topic; sft (its prompts carry the
    saved system prompt): cites passage [1] with passages, declines off topic."""
    out = []
    for p in prompts:
        sft = SFT_SYSTEM in p
        offtopic = any(q in p for q in OFFTOPIC_QUESTIONS)
        if offtopic:
            out.append(NOT_COVERED if sft else "见《黄帝内经》。")
        elif QUESTION_PREFIX in p:
            out.append("据[1]所载。" if sft else "一两一两一两一两")
        else:
            out.append("不详。" if sft else "")
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
    assert base["rag"]["degenerate"] == 1.0 and sft["rag"]["degenerate"] == 0.0
    assert sft["rag"]["vs_base"]["against"] == "base:rag"
    assert sft["rag"]["vs_base"]["degenerate"]["diff"] == -1.0
    assert sft["closed"]["vs_base"]["against"] == "base:closed" and sft["closed"]["declined"] == 0.0
    # sft cites [1]: right book exactly when the first hit is from the gold book
    preds = [json.loads(x) for x in (out.path / "predictions" / "sft__rows__rag.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert len(preds) == len(qa) and all(p["hits"] for p in preds)
    assert [p["right_book"] for p in preds] == [p["hits"][0]["book"] == p["book"] for p in preds]
    assert sft["rag"]["citation_book"] == pytest.approx(sum(p["right_book"] for p in preds) / len(preds))
    assert sft["rag"]["citation_book"] > 0 and sft["rag"]["gold_retrieved"] > 0
    assert set(sft["rag"]["by_type"]) == {r["task_type"] for r in qa}
    assert doc["models"]["base"]["offtopic"]["invented_citation"] == 1.0
    assert doc["models"]["sft"]["offtopic"] == pytest.approx(
        {"n": 30, "invented_citation": 0.0, "declined": 1.0, "degenerate": 0.0,
         "with_hits": doc["models"]["sft"]["offtopic"]["with_hits"]})
    md = (out.path / "report.md").read_text(encoding="utf-8")
    for s in ("### Held-out-book QA: the system users get", "| **base** | closed-book |", "| **sft** | + retrieval |",
              "### Held-out-book QA by question type: sft, + retrieval", "Off-topic (30 questions",
              "+0.0 [+0.0, +0.0]", "-100.0 [-100.0, -100.0]"):
        assert s in md, s
    # resumed stage: every part reused, nothing generated again
    n_before = len(out.metrics().read())
    evaluate_models(cfg, models, heldout, None, out, index=heldout)
    events = [m["event"] for m in out.metrics().read()[n_before:]]
    assert events.count("model_reused") == 2 and "model_load" not in events and "qa_row" not in events


def test_rows_real_decoder_and_no_index(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("qihuang.decoding")
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
