"""Offline generators on invented passages: answers are exact to the passage structure and grounded."""

from __future__ import annotations

import random
import re
from pathlib import Path

from qihuang.textmetrics import grounding_score
from qihuang.instruct.offline import GENERATORS, Lexicon, generate_offline, pick_diverse
from qihuang.instruct.records import Passage, load_passages

from .conftest import LEXICON

LEX = Lexicon(frozenset(LEXICON), 8)


def _by_section(passages_file: Path) -> dict[str, Passage]:
    return {p.section: p for p in load_passages(passages_file)}


def _all(p: Passage) -> list:
    rng = random.Random(0)
    return [pair for fn in GENERATORS.values() for pair in fn(p, rng, LEX)]


def test_formula_composition_preparation_and_indication(passages_file: Path) -> None:
    p = _by_section(passages_file)["辨头痛脉证并治"]
    pairs = _all(p)
    comp = {x.extra["formula"]: x for x in pairs if x.task_type == "方剂组成"}
    assert set(comp) == {"清风汤", "石膏饮"}
    assert "荆芥（三两）、防风（二两）、甘草（炙，一两）" in comp["清风汤"].answer
    assert "石膏（碎，一斤）、知母（六两）、粳米（六合）" in comp["石膏饮"].answer
    s, e = comp["清风汤"].span
    assert p.text[s:e].startswith("荆芥（三两）")
    prep = [x for x in pairs if x.task_type == "方剂煎服" and x.extra["formula"] == "清风汤"][0]
    assert "上三味，以水五升，煮取二升，去滓，温服一升。" in prep.answer and "2．" not in prep.answer
    ind = [x for x in pairs if x.task_type == "方证主治" and x.extra["formula"] == "石膏饮"][0]
    assert "头痛，口渴，脉洪大者" in ind.answer


def test_clause_number_and_text(passages_file: Path) -> None:
    p = _by_section(passages_file)["辨头痛脉证并治"]
    clauses = [x for x in _all(p) if x.task_type in ("条文原文", "条文定位")]
    assert clauses
    texts = {1: "头痛，恶风，汗出，脉浮缓者，清风汤主之。", 2: "头痛，口渴，脉洪大者，石膏饮主之。",
             3: "头痛日久，面色无华，心悸少寐者，此为血虚也。"}
    for x in clauses:
        n = x.extra["clause"]
        assert texts[n] in x.answer and f"第{n}条" in x.answer + x.question
        assert "荆芥" not in x.answer  # the formula block is not part of the clause


def test_herb_entry_nature_meridian_and_use(passages_file: Path) -> None:
    secs = _by_section(passages_file)
    herb = {x.task_type: x for x in _all(secs["青木香"]) if x.task_type.startswith("药物")}
    assert "味苦，微寒，无毒" in herb["药物性味"].answer
    assert "主清热解毒，消肿止痛，疗咽喉肿痛" in herb["药物主治"].answer
    nature = [x for x in _all(secs["赤石脂"]) if x.task_type == "药物性味"][0]
    assert "味甘，温" in nature.answer and "入大肠经" in nature.answer
    assert not [x for x in _all(secs["咳嗽门"]) if x.task_type.startswith("药物")]


def test_cloze_blank_is_a_lexicon_term(passages_file: Path) -> None:
    for p in load_passages(passages_file):
        for x in _all(p):
            if x.task_type == "原文填空":
                term = x.extra["term"]
                assert term in LEXICON and "____" in x.question and term not in x.question.split("：")[-1]
                masked = re.search(r"(?:：「|：|？)([^「」：？]*____[^「」]*?)」?$", x.question).group(1)
                assert masked.replace("____", term) in x.answer


def test_lexicon_definition_pairs(passages_file: Path) -> None:
    p = _by_section(passages_file)["论风眩第三"]
    defs = {x.extra["term"]: x for x in _all(p) if x.task_type == "名词概念"}
    assert "风眩者，头目旋转而欲仆也" in defs["风眩"].answer
    assert "病名曰肝厥" in defs["肝厥"].answer


def test_all_offline_pairs_are_grounded_and_attributed(passages_file: Path) -> None:
    ps = load_passages(passages_file)
    by_id = {p.id: p for p in ps}
    pairs = list(generate_offline(ps, list(GENERATORS), LEX, per_passage=6, seed=0))
    assert len({x.task_type for x in pairs}) >= 10
    for x in pairs:
        p = by_id[x.passage_id]
        assert grounding_score(x.answer, p.context) >= 0.45, (x.question, x.answer)
        assert x.book == p.book and x.section == p.section and x.category == p.category
        assert 0 <= x.span[0] < x.span[1] <= len(p.text)
        assert x.generator.startswith("offline:")


def test_deterministic_and_seed_dependent(passages_file: Path) -> None:
    ps = load_passages(passages_file)
    a = [x.to_dict() for x in generate_offline(ps, list(GENERATORS), LEX, 4, seed=1)]
    b = [x.to_dict() for x in generate_offline(ps, list(GENERATORS), LEX, 4, seed=1)]
    c = [x.to_dict() for x in generate_offline(ps, list(GENERATORS), LEX, 4, seed=2)]
    assert a == b and a != c


def test_pick_diverse_round_robins_types(passages_file: Path) -> None:
    p = _by_section(passages_file)["辨头痛脉证并治"]
    picked = pick_diverse(_all(p), 4, random.Random(0))
    assert len(picked) == 4 and len({x.task_type for x in picked}) == 4


def _psg(section: str, text: str, book: str = "拟圣济方", category: str = "方书") -> Passage:
    return Passage(id="x1", book=book, category=category, section=section, start=0, end=len(text), text=text)


def test_unnamed_formula_uses_its_indication_and_section_paths() -> None:
    p = _psg("卷第五/治脾胃气虚呕吐诸方",
             "治脾胃气虚，呕吐不下食，宜服此方。\n人参（一两去芦头） 白术（三分） 甘草（半两炙）\n"
             "上件药。捣筛为散。每服三钱。以水一中盏。煎至六分。去滓温服。")
    pairs = [x for x in _all(p) if x.task_type in ("方剂组成", "方剂煎服")]
    comp = [x for x in pairs if x.task_type == "方剂组成"][0]
    assert "治脾胃气虚，呕吐不下食" in comp.question
    assert "人参（一两去芦头）、白术（三分）、甘草（半两炙）" in comp.answer
    assert "卷第五·治脾胃气虚呕吐诸方" in comp.answer or "《拟圣济方》" in comp.answer
    prep = [x for x in pairs if x.task_type == "方剂煎服"][0]
    assert "上件药。" in prep.answer


def test_formula_name_is_not_a_preparation_phrase() -> None:
    p = _psg("卷一", "又方。\n大黄（八两） 葶苈（熬）\n上二味，捣细罗为散，以粥饮下十五丸。")
    assert not [x for x in _all(p) if x.task_type == "方剂组成" and "为散" in x.extra["formula"]]


def test_herb_entry_under_a_section_path() -> None:
    p = _psg("虫兽三品/上品/青鳞甲", "味咸，平、微寒，无毒。主治惊悸，寒热，止汗。一名青甲。生东海。",
             book="拟本草集注", category="本草")
    got = {x.task_type: x for x in _all(p)}
    assert "青鳞甲" in got["药物性味"].question and "味咸，平、微寒，无毒" in got["药物性味"].answer
    assert "主治惊悸，寒热，止汗。" in got["药物主治"].answer
    assert not [x for x in _all(_psg("卷一/论脉", "味甘，平。主补中。")) if x.task_type.startswith("药物")]


def test_junk_sentences_are_not_used() -> None:
    p = _psg("卷一", "治伤寒□□，发热恶寒，头痛身疼者。凡病皆当审其虚实，不可妄投攻伐之药也。")
    for x in _all(p):
        assert "□" not in x.question + x.answer
