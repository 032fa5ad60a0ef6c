"""MCQ file formats: CMMLU, TCMChat, generic letter CSV, JSONL/JSON; malformed rows skipped with row numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qihuang.evaluate.mcq import extract_letter
from qihuang.evaluate.mcq_formats import EvalDataError, MCQItem, build_prompt, load_mcq

from .conftest import BAD_CSV, GOOD_CMMLU, write_jsonl, write_text


def test_cmmlu_csv(tmp_path: Path) -> None:
    s = load_mcq(write_text(tmp_path / "anatomy.csv", GOOD_CMMLU))
    assert s.format == "cmmlu" and len(s.items) == 3 and not s.skipped
    it = s.items[1]
    assert it.question == "水在零度会怎样" and list(it.options) == list("ABCD") and it.answer == "A"
    assert it.category == "anatomy" and it.row == 2


def test_tcmchat_csv_and_category_column(tmp_path: Path) -> None:
    text = "question,A,B,C,D,E,answer,parse\n甲问,一,二,三,四,五,C,解析\n乙问,一,二,三,四,,B,\n"
    s = load_mcq(write_text(tmp_path / "herb.csv", text))
    assert s.format == "tcmchat" and len(s.items) == 2
    assert len(s.items[0].options) == 5 and len(s.items[1].options) == 4  # trailing empty E is not an option
    dev = "sub_id,domain,question,A,B,answer\n1,中药学,问,甲,乙,a\n"
    d = load_mcq(write_text(tmp_path / "x_dev.csv", dev))
    assert d.items[0].category == "中药学" and d.items[0].answer == "A"


def test_malformed_rows_are_skipped_with_row_numbers(tmp_path: Path) -> None:
    s = load_mcq(write_text(tmp_path / "bad.csv", BAD_CSV))
    assert s.format == "letter-csv"
    assert [it.row for it in s.items] == [1, 7]
    assert s.items[1].answer == "B"  # lower-case answer letter accepted
    reasons = {d["row"]: d["reason"] for d in s.skipped}
    assert reasons == {2: "empty question", 3: "missing option", 4: "answer not among options",
                       5: "answer not among options", 6: "missing option"}
    assert s.total_rows == 7


def test_zero_valid_rows_is_a_clear_error(tmp_path: Path) -> None:
    f = write_text(tmp_path / "none.csv", "question,A,B,answer\n,x,y,A\nq,x,y,Z\n")
    with pytest.raises(EvalDataError, match="no valid question among 2 row"):
        load_mcq(f)
    with pytest.raises(EvalDataError, match="question"):
        load_mcq(write_text(tmp_path / "cols.csv", "foo,bar\n1,2\n"))
    with pytest.raises(EvalDataError, match="not found"):
        load_mcq(tmp_path / "missing.csv")


def test_jsonl_dict_list_and_lettered_string(tmp_path: Path) -> None:
    recs = [
        {"question": "问一", "options": {"A": "甲", "B": "乙", "C": "丙"}, "answer": "C"},
        {"Question": "问二", "Options": ["甲", "乙"], "Answer": "乙"},  # answer given as the option text
        {"question": "问三", "options": "A 甲\nB 乙\nC 丙\nD 丁", "answer": "D", "category": "内科"},
        {"question": "问四", "options": {"A": "甲", "B": "乙"}, "answer": "AB"},
        "not an object",
    ]
    f = write_jsonl(tmp_path / "q.jsonl", recs)
    with open(f, "a", encoding="utf-8") as fh:
        fh.write("{broken json\n")
    s = load_mcq(f)
    assert [it.answer for it in s.items] == ["C", "B", "D"]
    assert s.items[2].options == {"A": "甲", "B": "乙", "C": "丙", "D": "丁"} and s.items[2].category == "内科"
    assert [d["row"] for d in s.skipped] == [4, 5, 6]
    j = tmp_path / "q.json"
    j.write_text(json.dumps(recs[:2], ensure_ascii=False), encoding="utf-8")
    assert len(load_mcq(j).items) == 2


def test_limit_keeps_first_valid_rows_and_their_skips(tmp_path: Path) -> None:
    s = load_mcq(write_text(tmp_path / "bad.csv", BAD_CSV), limit=1)
    assert [it.row for it in s.items] == [1] and s.skipped == []


def test_prompt_and_letter_extraction() -> None:
    item = MCQItem("问", {"A": "清热", "B": "补气", "C": "活血"}, "B", "c", 1)
    shot = MCQItem("例", {"A": "甲", "B": "乙"}, "A", "c", 1)
    p = build_prompt(item, [shot])
    assert p.index("例\nA. 甲\nB. 乙\n答案：A. 甲") < p.index("问\nA. 清热") and p.endswith("答案：")
    assert extract_letter("答案是C。", item) == "C"
    assert extract_letter("B", item) == "B"
    assert extract_letter("我认为应该补气", item) == "B"
    assert extract_letter("Dunno", item) is None
    assert extract_letter("清热和补气", item) is None
