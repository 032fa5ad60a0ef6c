"""Bootstrap CIs and the open-QA metrics on strings with known values; QA file loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qihuang.evaluate.mcq_formats import EvalDataError
from qihuang.evaluate.qa import QAItem, load_qa, score_answers
from qihuang.evaluate.stats import accuracy, bootstrap_ci, paired_bootstrap_diff

from .conftest import write_jsonl


@pytest.mark.parametrize("correct", [[1, 0, 1, 1, 0, 0, 1, 1, 1, 0] * 3, [1] * 12 + [0] * 3, [0, 1]])
def test_ci_contains_accuracy(correct: list[int]) -> None:
    acc = accuracy(correct)
    lo, hi = bootstrap_ci(correct, 1000, seed=3)
    assert 0.0 <= lo <= acc <= hi <= 1.0 and hi > lo
    assert bootstrap_ci(correct, 1000, seed=3) == (lo, hi)  # seeded


def test_ci_width_shrinks_with_n_and_degenerate_cases() -> None:
    small = bootstrap_ci([1, 0] * 10, 2000)
    large = bootstrap_ci([1, 0] * 500, 2000)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 3
    # normal approximation for n=1000, p=0.5: half-width 1.96*sqrt(.25/1000) = 0.031
    assert (large[1] - large[0]) / 2 == pytest.approx(1.96 * math.sqrt(0.25 / 1000), rel=0.15)
    assert bootstrap_ci([1, 1, 1], 500) == (1.0, 1.0)


def test_paired_difference() -> None:
    a = [0, 1, 0, 1, 0, 0, 1, 0] * 5
    b = [1, 1, 0, 1, 1, 0, 1, 1] * 5
    d = paired_bootstrap_diff(a, b, 1000, seed=1)
    assert d["diff"] == pytest.approx(accuracy(b) - accuracy(a))
    assert 0 < d["lo"] <= d["diff"] <= d["hi"] and d["p_not_better"] < 0.05
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1], [1, 0])


def test_score_answers_with_faithfulness() -> None:
    from qihuang.textmetrics import grounding_score

    src = "麻黄汤主治太阳伤寒，恶寒发热，无汗而喘。"
    items = [QAItem("问", "恶寒发热，无汗而喘", src, 1), QAItem("问", "清热", None, 2)]
    summary, per = score_answers(items, ["恶寒发热，无汗而喘", "今天天气很好"])
    assert per[0]["rouge_l"] == pytest.approx(1.0, abs=1e-6) and per[1]["rouge_l"] == 0.0
    assert per[0]["faithfulness"] == pytest.approx(grounding_score("恶寒发热，无汗而喘", src))
    assert per[0]["faithfulness"] > 0.9 and "faithfulness" not in per[1]
    assert summary["n_with_source"] == 1 and summary["faithfulness"] == per[0]["faithfulness"]
    assert summary["length"] == (9 + 6) / 2  # punctuation counts, whitespace does not


def test_load_qa_formats(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "问一", "reference": "答一", "source": "原文", "meta": {}},
        {"question": "问二", "answer": "答二"},
        {"question": "", "reference": "x"},
        {"question": "问四", "output": "答四"},
    ])
    s = load_qa(f)
    assert [it.reference for it in s.items] == ["答一", "答二", "答四"] and s.items[0].source == "原文"
    assert s.skipped == [{"row": 3, "reason": "empty question or reference"}]
    assert len(load_qa(f, limit=2).items) == 2 and load_qa(f, limit=2).skipped == []
    cmb = tmp_path / "cmb.json"
    cmb.write_text(json.dumps([{"id": "0", "description": "病例：男，40岁。", "QA_pairs": [
        {"question": "诊断？", "answer": "感冒"}, {"question": "治疗？", "answer": ""}]}], ensure_ascii=False),
        encoding="utf-8")
    c = load_qa(cmb)
    assert c.format == "cmb-clin" and len(c.items) == 1 and c.items[0].question.endswith("诊断？")
    assert c.items[0].question.startswith("病例") and c.skipped[0]["row"] == 2
    with pytest.raises(EvalDataError, match="no valid"):
        load_qa(write_jsonl(tmp_path / "e.jsonl", [{"question": "q"}]))
