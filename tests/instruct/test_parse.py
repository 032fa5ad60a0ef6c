"""Teacher replies: JSON, fenced JSON, wrappers, JSON inside prose, numbered 问/答 and Q/A lists; judge verdicts."""

from __future__ import annotations

import json

import pytest

from qihuang.instruct.parse import ParseError, parse_judge, parse_pairs

ITEMS = [{"type": "名词概念", "question": "什么是风眩？", "answer": "头目旋转而欲仆。", "evidence": "风眩者"},
         {"type": "追问", "question": "如何治疗？", "answer": "当滋阴潜阳。"}]


def test_plain_json_array() -> None:
    got = parse_pairs(json.dumps(ITEMS, ensure_ascii=False))
    assert [g["question"] for g in got] == ["什么是风眩？", "如何治疗？"]
    assert got[0]["evidence"] == "风眩者" and got[0]["type"] == "名词概念"


def test_fenced_json_with_wrapper_and_prose() -> None:
    text = "好的，以下是问答：\n```json\n" + json.dumps({"pairs": ITEMS}, ensure_ascii=False) + "\n```\n希望有帮助。"
    assert len(parse_pairs(text)) == 2


def test_json_embedded_in_prose_and_chinese_keys() -> None:
    text = '结果如下：[{"问题": "何谓肝厥？", "答案": "阴虚阳亢，病名曰肝厥。"}] 以上。'
    assert parse_pairs(text) == [{"question": "何谓肝厥？", "answer": "阴虚阳亢，病名曰肝厥。"}]


def test_numbered_question_answer_list() -> None:
    text = "1. 问：什么是风眩？\n   答：头目旋转而欲仆。\n2. 问：如何治疗？\n   答：当滋阴潜阳，不可妄用辛散。"
    got = parse_pairs(text)
    assert [g["answer"] for g in got] == ["头目旋转而欲仆。", "当滋阴潜阳，不可妄用辛散。"]


def test_q_a_and_bold_markers() -> None:
    text = "**问题1**：浮脉主何证？\n**答案1**：浮而有力为表实。\nQ2: 浮紧主何病？\nA2: 伤寒。"
    got = parse_pairs(text)
    assert [(g["question"], g["answer"]) for g in got] == [("浮脉主何证？", "浮而有力为表实。"), ("浮紧主何病？", "伤寒。")]


@pytest.mark.parametrize("text", ["", "   ", "这段原文很好，我就不列问答了。", '{"foo": 1}', "[1, 2, 3]"])
def test_unparseable_raises(text: str) -> None:
    with pytest.raises(ParseError):
        parse_pairs(text)


def test_items_missing_answer_are_dropped() -> None:
    got = parse_pairs(json.dumps([{"question": "只有问题"}, ITEMS[0]], ensure_ascii=False))
    assert len(got) == 1


def test_judge_verdicts() -> None:
    assert parse_judge('{"supported": true, "reason": "见原文"}') is True
    assert parse_judge('```json\n{"supported": false}\n```') is False
    assert parse_judge("是的，有依据。") is True
    assert parse_judge("无法判断") is None
