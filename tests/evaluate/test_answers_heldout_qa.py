"""Per-answer checks (degeneration, citation accuracy), the held-out-book QA builder and row resolution, on
handmade cases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from qihuang.config import ConfigError
from qihuang.evaluate import EvalConfig
from qihuang.evaluate.answers import answer_flags, citation_accuracy, is_degenerate, section_matches
from qihuang.evaluate.conditions import aggregate, resolve_models, resolve_rows, score_items
from qihuang.evaluate.heldout_qa import balanced_sample, build_heldout_qa, names_its_book
from qihuang.evaluate.offtopic import OFFTOPIC_QUESTIONS
from qihuang.evaluate.qa import QAItem, score_answers
from qihuang.instruct.textutil import Lexicon
from qihuang.retrieval import Passage

from .conftest import write_jsonl


@pytest.mark.parametrize("text", ["", "  \n", "一两一两一两一两…", "是一个文本，其是一个文本，其是一个文本",
                                  "桂枝汤主之。主之主之主之", "阴阳者，天地之道也。阴阳者，天地之道也。阴阳者，天地之道也。",
                                  # garbled (seen in the session-6 demo's answers): punctuation noise, single
                                  # characters strung on marks, a walk through neighbouring characters
                                  "据《本草》：\n据《文》：《本》：“《文”：“》”：“文”：“.》”；”：“.“》：“.““》”",
                                  "据《洄溪医案》：“洄”，“溪”，“医”，“案”，“凉”，“痛”",
                                  "“上”：“工”：“治”：“未”：“病”",
                                  "据《重订通俗伤寒论》：气·氣·水·氳·氢·氨·氮·氯·氬",
                                  "什么叫冬温？－－；；＋；！！；＊；＆！＆＆００＆１１０１２２"])
def test_degenerate(text: str) -> None:
    assert is_degenerate(text)


@pytest.mark.parametrize("text", ["桂枝三两，芍药三两，甘草二两", "桂枝三两，芍药三两，甘草三两，生姜三两，大枣十二枚",
                                  "太阳之为病，脉浮，头项强痛而恶寒。出处：《伤寒论·辨太阳病脉证并治》",
                                  "所给资料中没有关于这个问题的记载，无法据此作答。",
                                  # honest enumerations of single characters, and tables drawn with box lines
                                  "甲、乙、丙、丁、戊、己、庚、辛", "五脏 心。肝。肺。肾。脾。识五脏之脉",
                                  "七情所感寒。暑。温。燥。热。怒。悲。思。", "心──肝──脾──肺──肾，此五行相生之序也。"])
def test_not_degenerate(text: str) -> None:
    assert not is_degenerate(text)


def test_citation_accuracy() -> None:
    ps = [Passage("x:0-9", "伤寒明理论", "卷一/发热", "发热者……"), Passage("y:0-9", "时病论", "卷二", "春温……")]
    assert citation_accuracy("出处：《伤寒明理论·发热》", "伤寒明理论", "卷一/发热").right_section
    c = citation_accuracy("见[2]。", "时病论", "卷二", ps)
    assert c.right_book and c.right_section and c.cited == [("时病论", "卷二")]
    c = citation_accuracy("见[1]。", "时病论", "卷二", ps)
    assert not c.right_book and not c.right_section
    c = citation_accuracy("出自《伤寒明理论》。", "伤寒明理论", "卷一/发热")
    assert c.right_book and not c.right_section
    # the attribution answers' own style names the chapter in 「」 after the book
    assert citation_accuracy("这句话出自《伤寒明理论》的「发热」篇。", "伤寒明理论", "卷一/发热").right_section
    none = citation_accuracy("发热者，谓怫怫然发于皮肤之间。", "伤寒明理论", "卷一/发热")
    assert none.cited == [] and not none.right_book
    assert section_matches("卷一·发热", "卷一/发热") and not section_matches("卷二", "卷一/发热")
    assert not citation_accuracy("[5]", "时病论", "卷二", ps).cited  # a mark beyond the prompt passages


def test_aggregate_counts_no_citation_as_wrong() -> None:
    items = [{"question": "q1", "reference": "r", "source": "s", "book": "甲书", "section": "一", "task_type": "出处"},
             {"question": "q2", "reference": "r", "source": "s", "book": "甲书", "section": "一", "task_type": "原文填空"},
             {"question": "q3", "reference": "r", "book": "乙书", "section": "", "task_type": "药物主治"}]
    answers = ["出自《甲书·一》", "不知道", "所给资料中没有相关记载"]
    per = score_items(items, answers, [[], [], []])
    for p, it, a in zip(per, items, answers):
        assert {k: p[k] for k in answer_flags(a, it)} == answer_flags(a, it)
        assert p["answer"] == a and p["hits"] == [] and p["gold_retrieved"] is False
    s = aggregate(per)
    assert s["n_with_source"] == 2 and s["n_attribution"] == 1
    assert s["citation_book"] == 0.5 and s["citation_book_attribution"] == 1.0 and s["citation_section"] == 0.5
    assert s["declined"] == pytest.approx(1 / 3) and s["degenerate"] == 0.0
    # the open-QA figures are exactly qa.score_answers' on the same answers
    qa_summary, _ = score_answers([QAItem(it["question"], it["reference"], it.get("source"), i)
                                   for i, it in enumerate(items)], answers)
    for k in ("rouge_l", "bleu4", "faithfulness", "length"):
        assert s[k] == qa_summary[k], k
    assert s["length"] == pytest.approx(sum(len(a) for a in answers) / 3) and s["gold_retrieved"] is None


def _heldout(tmp_path: Path) -> Path:
    """An invented held-out file: two books, numbered clauses, a formula, a definition, chapter titles."""
    recs = [
        {"id": "a:0", "book": "甲医书", "section": "卷一/论发热", "category": "伤寒",
         "text": "1．病人发热而恶寒者，此为表证也，当发其汗。2．病人发热不恶寒而反恶热者，此为里证也，当下之。"
                 "凡治病之道，必先明其表里，而后施以汗下之法。"},
        {"id": "a:1", "book": "甲医书", "section": "卷一/论汗法", "category": "伤寒",
         "text": "汗出而热不退，脉反躁疾者，名曰阴阳交。阴阳交者，死不治也。医者当审其脉象，勿妄施汗法也。"},
        {"id": "b:0", "book": "乙药书", "section": "卷二/草部", "category": "本草",
         "text": "黄芪，味甘，微温。主痈疽久败疮，排脓止痛，大风癞疾，补虚。小儿百病，可以久服轻身延年也。"},
        {"id": "b:1", "book": "乙药书", "section": "卷二/方论", "category": "本草",
         "text": "补中益气汤治劳倦内伤，身热心烦，头痛恶寒，懒言恶食，脉洪大而虚。其方以黄芪为君，人参甘草为臣。"},
    ]
    return write_jsonl(tmp_path / "heldout.jsonl", recs)


def test_build_heldout_qa(tmp_path: Path) -> None:
    lex = Lexicon(frozenset({"发热", "恶寒", "表证", "里证", "阴阳交", "黄芪", "补中益气汤", "劳倦内伤"}))
    recs = build_heldout_qa(_heldout(tmp_path), 40, 0, lex)
    types = Counter(r["task_type"] for r in recs)
    assert len(types) >= 5, types
    assert {r["book"] for r in recs} <= {"甲医书", "乙药书"}
    for r in recs:
        assert set(r) >= {"question", "reference", "source", "book", "section", "passage_id", "task_type"}
        assert r["source"] and r["reference"] and r["passage_id"] in {"a:0", "a:1", "b:0", "b:1"}
    assert recs == build_heldout_qa(tmp_path / "heldout.jsonl", 40, 0, lex)  # deterministic
    # references of attribution questions cite their own book: the scorer accepts the generators' style
    attr = [r for r in recs if r["task_type"] in ("出处", "篇名归属")]
    assert attr and all(citation_accuracy(r["reference"], r["book"], r["section"]).right_book for r in attr)
    # every other question names its book: 「黄芪的性味是什么？」 has a right answer in every herbal of the library
    assert all(f"《{r['book']}》" in r["question"] for r in recs if r not in attr)


def test_a_question_that_does_not_name_its_book_is_left_out() -> None:
    assert not names_its_book("请说明杏仁的性味。", "本草思辨录", "药物性味")
    assert names_its_book("《本草思辨录》记载杏仁的药性如何？", "本草思辨录", "药物性味")
    assert names_its_book("「上工治未病」这句话出自哪部医书？", "金匮要略", "出处")
    assert names_its_book("《序》这一篇收在哪本古籍里？", "本草思辨录", "篇名归属")


def test_balanced_sample() -> None:
    recs = [{"task_type": t, "book": b, "passage_id": f"{t}{i}", "question": f"{t}{b}{i}"}
            for t, k in (("甲", 30), ("乙", 30), ("丙", 2)) for b in ("x", "y") for i in range(k)]
    got = balanced_sample(recs, 20, 0)
    c = Counter(r["task_type"] for r in got)
    assert c["丙"] == 4 and c["甲"] == 8 and c["乙"] == 8
    assert Counter(r["book"] for r in got if r["task_type"] == "甲") == {"x": 4, "y": 4}
    assert got == balanced_sample(list(reversed(recs)), 20, 0)


def test_rows_and_config() -> None:
    labels = ["base", "cpt", "sft"]
    assert resolve_rows(["base:closed", "base:rag", "*:rag", "last:closed"], labels) == [
        ("base", "closed"), ("base", "rag"), ("cpt", "rag"), ("sft", "rag"), ("sft", "closed")]
    assert resolve_rows(["first:rag", "dpo:rag"], labels) == [("base", "rag")]
    assert resolve_models("*", labels) == labels and resolve_models("last", labels) == ["sft"]
    assert resolve_models("base", ["pre", "sft"]) == ["pre"] and resolve_models("dpo", labels) == []
    with pytest.raises(ConfigError, match="qa_rows"):
        EvalConfig(qa_rows=["base:open"])
    with pytest.raises(ConfigError, match="passages_k"):
        EvalConfig(passages_k=11)
    with pytest.raises(ConfigError, match="heldout_qa_n"):
        EvalConfig(heldout_qa_n=-1)
    with pytest.raises(ConfigError, match="passage_chars"):
        EvalConfig(passage_chars=19)
    # the probe's questions: distinct, and all in Chinese (at least one CJK character each)
    assert len(set(OFFTOPIC_QUESTIONS)) == len(OFFTOPIC_QUESTIONS) == 30
    assert all(any("\u4e00" <= c <= "\u9fff" for c in q) for q in OFFTOPIC_QUESTIONS)


@pytest.mark.parametrize(("answer", "echo"), [
    ("《外科全生集》中「赤游」指的是什么？", True),                       # the question, word for word
    ("据《外科全生集·卷一》：《外科全生集》中「赤游」指的是什么？", True),  # the question behind a citation
    ("据《外科全生集·卷一》：", True),                                  # a citation and nothing else
    ("", True),
    ("赤游即赤游丹，小儿皮肤红肿游走如丹，多因胎毒。", False),          # an answer in its own words
    ("据《外科全生集·卷一》：赤游指小儿丹毒，皮色红赤，游走不定。", False),
])
def test_echoes_question(answer: str, echo: bool) -> None:
    from qihuang.evaluate.answers import echoes_question

    assert echoes_question(answer, "《外科全生集》中「赤游」指的是什么？") is echo
