"""The relevance gate and citation choice in front of retrieval-augmented answers (`qihuang.relevance`, `rag.ground`),
section scoping in search, and how serve streams a grounded answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from qihuang import rag
from qihuang.relevance import DomainTerms, cited_passage, judge, longest_shared, quotes_first, section_terms
from qihuang.retrieval import Hit, Passage, PassageIndex


def test_longest_shared_and_section_terms() -> None:
    assert longest_shared("桂枝汤主营卫不和", "《拟方》云：桂枝汤主营卫不和者") == 8
    assert longest_shared("汽车", "桂枝汤") == 0
    assert section_terms(["卷上/项强", "第三章·小柴胡汤方", "（十一）五禽戏法"]) >= {"项强", "小柴胡汤", "五禽戏法"}


def test_domain_terms_leave_out_everyday_words() -> None:
    terms = DomainTerms(["黄芪", "作用", "卷之一", "序", "桂枝汤", "桂枝"], generic={"作用": 22078, "黄芪": 114})
    assert terms.find("黄芪的作用是什么") == ["黄芪"]
    assert terms.find("桂枝汤的组成") == ["桂枝汤", "桂枝"]  # longest first
    assert terms.find("卷之一说了什么") == [] and terms.find("汽车保养") == []
    assert DomainTerms(["赤游丹毒", "赤游丹", "桂枝"]).begins("赤游") == "赤游丹"  # a term's short name
    assert DomainTerms(["赤游丹", "桂枝"]).begins("桂枝") is None and DomainTerms(["桂枝"]).begins("汽车") is None


def test_a_marked_short_name_of_a_term_is_about_the_classics(index: PassageIndex) -> None:
    """「赤游」指的是什么？ — 赤游 is no term of its own, but 赤游丹 is: marked, it is the classics' word."""
    assert judge("「调神」是什么意思？", index.search("「调神」是什么意思？", 3), index).covered  # 调神篇
    assert not judge("调神是什么意思？", index.search("调神是什么意思？", 3), index).covered  # unmarked: no
    assert not judge("「汽车」是什么意思？", index.search("「汽车」是什么意思？", 3), index).covered


@pytest.mark.parametrize("question, covered", [
    ("桂枝汤主治何证？", True),                      # a term of the library (a section name)
    ("《虚构医经》讲了什么？", True),                  # names a book
    ("「脉象篇」收在哪本书里？", True),                # names a section
    ("“春日宜早起，缓步于庭”出自哪里？", True),        # quotes a passage
    ("汽车发动机的机油多久换一次？", False),
    ("Python 中列表和元组有什么区别？", False),
])
def test_gate_declines_what_the_classics_do_not_speak_to(index: PassageIndex, question: str, covered: bool) -> None:
    g = rag.ground(index, question, 3)
    assert (g.answer is None) == covered, g.reason
    if covered:
        assert g.hits and g.prefix.startswith("据《") and g.prefix.endswith("》：")
    else:
        assert g.answer == rag.NOT_COVERED and g.hits == [] and g.prefix == ""
        assert not judge(question, index.search(question, 3), index).covered
    assert rag.ground(index, question, 3, gate=False).answer is None  # gate off: always answered


def test_cited_passage_is_the_one_the_question_quotes(index: PassageIndex) -> None:
    q = "“苦能燥湿，寒能清热”出自哪部书？"
    hits = index.search(q, 3)
    assert cited_passage(q, hits).id == "test-006"
    assert rag.ground(index, q, 3).prefix == "据《假托本草·黄连》："
    assert cited_passage(q, []) is None


def test_quotes_first_moves_the_quoting_passage_up() -> None:
    a = Passage(id="a", book="甲", section="一", text="发热恶寒者，发于阳也。")
    b = Passage(id="b", book="乙", section="二", text="病有发热恶寒者，发于阳也；无热恶寒者，发于阴也。")
    hits = [Hit(a, 9.0, 1), Hit(b, 5.0, 2)]
    out = quotes_first("“无热恶寒者，发于阴也”出自哪里", hits, 2)
    assert [h.passage.id for h in out] == ["b", "a"] and [h.rank for h in out] == [1, 2]
    assert [h.passage.id for h in quotes_first("发热", hits, 1)] == ["a"]  # nothing quoted: BM25's order


def test_a_named_section_scopes_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path / "home"))
    rows = [{"id": f"p{i}", "book": b, "section": s, "text": t} for i, (b, s, t) in enumerate([
        ("甲书", "卷上/项强", "项背强几几，汗出恶风。"),
        ("乙书", "卷下/杂论", "这一篇收在哪本古籍里？此句乃今人所设之问，项强二字亦在焉，项强项强。"),
        ("丙书", "卷上/自汗", "自汗者，不因发散而自汗出也。")])]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    index = PassageIndex.open(path)
    q = "《卷上·项强》这一篇收在哪本古籍里？"
    assert index.search(q, 1)[0].passage.book == "甲书"
    assert index.search(q, 1, scoped=False)[0].passage.book == "乙书"  # the question's words alone mislead
    assert index.search("「卷上·自汗」是哪部医书中的篇章？", 1)[0].passage.book == "丙书"
    # a path in “…” names a section too (the held-out questions write 请问“卷四·蛴螬”一节出自哪部著作？)
    q = "请问“卷上·项强”一节出自哪部著作？"
    assert index.search(q, 1)[0].passage.book == "甲书" and index.search(q, 1, scoped=False)[0].passage.book == "乙书"
    assert judge(q, index.search(q, 1), index).reason == "names a section"
    from qihuang.scope import marks_place
    assert marks_place(q) and not marks_place("“项强”是什么意思？") and not marks_place("项强是什么？")
    reopened = PassageIndex.open(path)  # the section scope was saved with the index
    assert reopened.sections.names == ["卷上/项强", "卷下/杂论", "卷上/自汗"]


def test_server_sends_the_decline_and_the_citation_opening(engine: Any, index: PassageIndex) -> None:
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig
    from tests.serve.conftest import start_server

    srv = start_server(create_app(engine, index, ServeConfig(max_tokens=8)))
    try:
        url = f"{srv.url}/v1/chat/completions"
        off = httpx.post(url, json={"messages": [{"role": "user", "content": "汽车发动机的机油多久换一次？"}]},
                         timeout=60).json()
        assert off["choices"][0]["message"]["content"] == rag.NOT_COVERED and off["citations"] == []
        assert off["usage"]["completion_tokens"] == 0
        on = httpx.post(url, json={"messages": [{"role": "user", "content": "“苦能燥湿，寒能清热”出自哪部书？"}],
                                   "max_tokens": 4}, timeout=60).json()
        assert on["choices"][0]["message"]["content"].startswith("据《假托本草·黄连》：")
        assert any(c["cited"] and c["id"] == "test-006" for c in on["citations"])
        with httpx.stream("POST", url, json={"messages": [{"role": "user", "content": "“苦能燥湿”出自哪部书？"}],
                                             "max_tokens": 3, "stream": True}, timeout=60) as r:
            deltas = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in r.iter_lines()
                      if line.startswith("data: {")]
        assert [d for d in deltas if d][0] == "据《假托本草·黄连》："  # the opening is the first text sent
        plain = httpx.post(url, json={"messages": [{"role": "user", "content": "汽车"}], "retrieval": False,
                                      "max_tokens": 2}, timeout=60).json()
        assert plain["choices"][0]["message"]["content"] != rag.NOT_COVERED  # no retrieval: no gate
    finally:
        srv.stop()


def _index_of(rows: list[dict[str, str]], tmp_path: Path) -> PassageIndex:
    """An index over `rows` (id, book, section, text), each its own passage."""
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({**r, "category": "医经", "start": 0, "end": len(r["text"])},
                                       ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return PassageIndex.open(path, rebuild=True)


def test_a_named_formula_or_herb_is_answered_from_its_own_entry(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """桂枝汤由哪些药物组成？ — BM25 favours passages sharing 组成/药物 (modern notes on other formulas); the formula's
    own entry comes first when no retrieved passage quotes the question."""
    rows = [
        {"id": "note-1", "book": "今人注释", "section": "小建中汤", "text": "小建中汤由桂枝汤倍芍药组成，此方药物组成如下。"},
        {"id": "note-2", "book": "今人注释", "section": "附子汤", "text": "附子汤组成：附子、茯苓、人参，药物组成简明。"},
        {"id": "comment", "book": "假托明理", "section": "卷下/桂枝汤方", "text": "经曰：桂枝本为解肌，此方组成之义，药物之理，详见下文。"},
        {"id": "entry", "book": "假托伤寒", "section": "卷二/桂枝汤方", "text": "桂枝三两，芍药三两，甘草二两，生姜三两，大枣十二枚。"},
        {"id": "herb", "book": "假托本草", "section": "卷一/黄连", "text": "味苦寒。主热气目痛，眦伤泣出。"},
        {"id": "other", "book": "假托本草", "section": "卷一/黄芩", "text": "黄连之属，味苦平，主诸热黄疸。"},
        {"id": "fever", "book": "假托杂病", "section": "卷一/寒热", "text": "寒热者，寒已又热，热已又寒，属性不一。"},
    ]
    idx = _index_of(rows, tmp_path)
    # the entry that lists doses comes before a commentary entry of the same name sharing the question's words
    assert [h.passage.id for h in rag.retrieve(idx, "桂枝汤由哪些药物组成？", 2)] == ["entry", "comment"]
    assert rag.retrieve(idx, "黄连的性味如何？", 1)[0].passage.id == "herb"
    # 寒热 is a headword too, but here it is what is asked of 黄连 (寒热属性), not the subject
    assert rag.retrieve(idx, "黄连味道和寒热属性怎样？", 1)[0].passage.id == "herb"
    assert rag.retrieve(idx, "寒热的属性如何？", 1)[0].passage.id == "fever"
    quoted = "“小建中汤由桂枝汤倍芍药组成”出自哪里？"  # a quote keeps the passage that holds it first
    assert rag.retrieve(idx, quoted, 1)[0].passage.id == "note-1"
    monkeypatch.setattr(rag, "HEADWORDS", False)
    assert rag.retrieve(idx, "桂枝汤由哪些药物组成？", 1)[0].passage.id != "entry"  # what it fixes


def test_a_long_name_a_modern_spelling_and_a_text_printed_twice_still_find_the_entry(tmp_path: Path) -> None:
    """What the demo's server answered in session 23: 「小柴胡汤的组成是什么？」 quoted 「小柴胡汤的」 (five shared
    characters) from a modern essay, printed twice in its book, so both passages shown were the essay's one text;
    「黄芪的性味」 found no entry (the classics write 黄耆)."""
    essay = "后世论小柴胡汤的和法，小建中汤的补法，皆本于此，其组成之义详见各方。"
    rows = [
        {"id": "essay-1", "book": "今人论集", "section": "总论", "text": essay},
        {"id": "essay-2", "book": "今人论集", "section": "总论", "text": essay},
        {"id": "entry", "book": "假托伤寒", "section": "卷二/小柴胡汤方", "text": "柴胡半斤，黄芩三两，人参三两，半夏半升。"},
        {"id": "herb", "book": "假托本草", "section": "卷一/黄耆", "text": "味甘微温。主痈疽久败疮，排脓止痛。"},
        {"id": "other", "book": "假托本草", "section": "卷一/人参", "text": "味甘微寒。主补五脏，黄芩为之使。"},
    ]
    idx = _index_of(rows, tmp_path)
    assert rag.retrieve(idx, "小柴胡汤的组成是什么？", 1)[0].passage.id == "entry"
    assert rag.retrieve(idx, "后世论小柴胡汤的和法出自哪里？", 1)[0].passage.id == "essay-1"  # a real quote still wins
    assert [h.passage.id for h in rag.retrieve(idx, "小建中汤的补法", 3)].count("essay-2") == 0  # one text, once
    assert rag.retrieve(idx, "黄芪的性味是什么？", 1)[0].passage.id == "herb"


def test_an_entry_asked_about_as_a_whole_is_shown_and_quoted_from_its_head() -> None:
    from qihuang.answer_guard import fallback_quote
    from qihuang.relevance import entry_of, quote_span

    herb = Passage(id="h", book="假托本草", section="卷一/黄连",
                   text="味苦寒。主热气目痛。" + "后世注家论曰：此药不是性味移易之品，" * 4 + "其余从略。")
    assert entry_of(herb, "黄连的性味如何？") and quote_span(herb, "黄连的性味如何？", 40) == (0, 10)
    assert fallback_quote(herb, "黄连的性味如何？").startswith("原文：「味苦寒。主热气目痛。")
    assert rag.passage_window(herb, "黄连的性味如何？", 30)[0] == 0  # the prompt shows the head too
    # a term inside the entry, a marked section, or a quote: the best-matching sentence as before
    for q in ("「卷一·黄连」中是怎样论述“性味移易”的？", "黄连条下“此药不是性味移易之品”出自哪里？"):
        assert not entry_of(herb, q), q
        assert quote_span(herb, q, 40)[0] > 0, q
    assert not entry_of(herb, "黄连有哪些别名？")  # not an aspect the entry's head states
    assert entry_of(herb, "《假托本草》记载黄连的药性如何？")  # the book named: still the entry's head
    assert not entry_of(herb, "《药性赋》中黄连有哪些别名？")  # the aspect word only in the book's name


def test_a_fragment_where_a_passage_breaks_off_is_not_the_best_sentence() -> None:
    from qihuang.answer_guard import lead_quote

    p = Passage(id="m", book="假托思辨", section="卷二/麦冬论",
                text="麦冬形象，合之本经主治，自是胃家正药。徐氏云，麦冬甘平滋润，为纯补胃阴之药。而实权舆于仲圣之麦门冬汤。麦门")
    assert lead_quote(p, "《假托思辨》记载麦门冬的药性如何？") == "而实权舆于仲圣之麦门冬汤。"


def test_a_section_whose_book_is_asked_is_quoted_from_its_opening() -> None:
    from qihuang.answer_guard import lead_quote
    from qihuang.relevance import quote_span, section_asked

    p = Passage(id="w", book="假托方论", section="卷下/诸药方论/五苓散方",
                text="苓令也。号令之令矣。通行津液。克伐肾邪。五苓之中。茯苓为主。故曰五苓散。")
    for q in ("《卷下·诸药方论·五苓散方》这一篇收在哪本古籍里？", "「五苓散方」是哪部医书中的篇章？",
              "请问“卷下·诸药方论·五苓散方”一节出自哪部著作？"):
        assert section_asked(p, q), q
        assert lead_quote(p, q).startswith("苓令也。号令之令矣。"), q  # not 「故曰五苓散。」, which shares its name
    # not asking the book, quoting the text, or naming another section: the best-matching sentence as before
    for q in ("「五苓散方」中是怎样论述“茯苓”的？", "“故曰五苓散”出自哪部医书？", "「猪苓汤方」是哪部医书中的篇章？"):
        assert not section_asked(p, q), q
    assert quote_span(p, "“故曰五苓散”出自哪部医书？", 40)[0] > 0
    assert not section_asked(Passage(id="x", book="假托", section="序", text="夫医教者。"), "《序》这一篇收在哪本古籍里？")
    # the opening as a reader quotes it: whole sentences up to the first that ends OPENING_CHARS characters in
    cold = Passage(id="c", book="假托时病", section="卷之二/伤风",
                   text="伤风之病，即仲景书中风伤卫之证也，诸家已详，可毋细论耳。然其初起之大概，亦当述之。")
    assert lead_quote(cold, "「卷之二·伤风」是哪部医书中的篇章？") == "伤风之病，即仲景书中风伤卫之证也，诸家已详，可毋细论耳。"


def test_a_meaning_question_whose_best_sentence_repeats_it_gets_the_note_after_it() -> None:
    from qihuang.answer_guard import fallback_quote

    p = Passage(id="s", book="假托集注", section="卷二/阴阳", text="黄帝曰。阴阳者。天地之道也。（道者。阴阳之理也。）万物之纲纪。")
    assert fallback_quote(p, "“阴阳者，天地之道也”是什么意思？") == "原文：「天地之道也。（道者。阴阳之理也。）万物之纲纪。」"
    # where a sentence stands, the sentence itself is the answer
    assert fallback_quote(p, "“阴阳者，天地之道也”出自哪里？") == "原文：「天地之道也。」"


def test_the_quoted_sentence_is_the_one_on_the_term_asked_not_on_the_chapter_named() -> None:
    """Held-out questions of the demo (session 21): the chapter's name in the question matched a sentence echoing
    it (「…乃为洞泄。」) and the question's own term (“下利清谷”) lost; a definition asked got a sentence merely
    using the word."""
    from qihuang.answer_guard import lead_quote
    from qihuang.relevance import defines_word_of, marked_terms, what_is_asked

    p = Passage(id="d", book="假托时病", section="卷之三/春伤于风夏生飧泄大意/洞泄",
                text="经云：春伤于风，夏生飧泄，邪气留连，乃为洞泄。考其脉象，软缓乏力，下利清谷，小便短赤是也。")
    q = "《假托时病》「卷之三·春伤于风夏生飧泄大意·洞泄」中是怎样论述“下利清谷”的？"
    assert what_is_asked(p, q) == "||中是怎样论述“下利清谷”的？"
    assert marked_terms(what_is_asked(p, q)) == ["下利清谷"]
    assert lead_quote(p, q) == "考其脉象，软缓乏力，下利清谷，小便短赤是也。"
    # a single name in 「」 is the term asked about, not a place, even where a section bears it
    herb = Passage(id="h", book="假托本草", section="卷二/寒疟", text="寒疟之证，发时头痛。寒疟者，寒长热短也。")
    assert what_is_asked(herb, "《假托本草》中「寒疟」指的是什么？") == "|中「寒疟」指的是什么？"
    # a definition asked: the sentence that defines the word (X者， / 名曰X), not one that uses it
    warm = Passage(id="w", book="假托时病", section="卷八/冬温",
                   text="冬温虽发于冬时，用药与伤寒迥别。昔贤谓冬应寒而反温，人感之而即病者，名曰冬温是也。")
    assert lead_quote(warm, "什么叫冬温？请依据《假托时病》回答。") == "昔贤谓冬应寒而反温，人感之而即病者，名曰冬温是也。"
    assert defines_word_of("寒疟者，寒长热短也。", "「寒疟」指的是什么？")
    assert not defines_word_of("寒疟之证，发时头痛。", "「寒疟」指的是什么？")
    assert not defines_word_of("病者，寒长热短也。", "「寒疟」指的是什么？")  # a word the question does not hold
    # where the question asks nothing of a definition, a use of the word is as good as any
    assert lead_quote(warm, "《假托时病》里提到冬时的原文是什么？") == "冬温虽发于冬时，用药与伤寒迥别。"


def test_a_section_whose_book_is_asked_cites_its_first_passage_among_the_hits() -> None:
    later = Passage(id="b:900-960", book="假托明理", section="卷上/项强", text="其或太阳中风。加之寒湿而成痉者。", start=900)
    first = Passage(id="b:700-760", book="假托明理", section="卷上/项强", text="伤寒项强。何以明之。项背强者。", start=700)
    other = Passage(id="c:10-60", book="假托本草", section="卷一/葛根", text="葛根治项强。", start=10)
    hits = [Hit(later, 9.0, 1), Hit(other, 8.0, 2), Hit(first, 7.0, 3)]
    assert cited_passage("「卷上·项强」是哪部医书中的篇章？", hits) is first  # its opening is the section's
    # any other question: the best-matching hit, the retriever's rank breaking ties, as before
    assert cited_passage("《假托明理》「卷上·项强」中是怎样论述“太阳中风”的？", hits) is later


def test_a_section_whose_book_is_asked_retrieves_its_opening_passage(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out questions of the demo (session 26): 「《卷上·项强》这一篇收在哪本古籍里？」 retrieved only 项强's
    second passage (BM25 on the question's other words), so the answer quoted 「其或太阳中风。…」, not the section's
    opening 「伤寒项强。何以明之。」."""
    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path / "home"))
    rows = [{"id": f"p{i}", "book": b, "section": s, "text": t, "start": i * 100} for i, (b, s, t) in enumerate([
        ("甲书", "卷上/发热", "伤寒发热。何以明之。"),
        ("甲书", "卷上/项强", "伤寒项强。何以明之。项背强者。"),
        ("甲书", "卷上/项强", "其或太阳中风。此篇收在古籍之中，问哪本书者多矣。"),
        ("甲书", "卷上/项强", "加之寒湿而成痉者。古籍里哪本书收之。"),
        ("甲书", "卷下/中风", "太阳中风，脉浮缓。太阳中风者，汗出恶风。"),
        ("医案", "医案", "若不当下者反下之，遂成结胸，以致闻者遂以下为戒。"),
        ("医案", "医案", "疮口若大，则肌肉难生。哪本书横线处应是什么。")])]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    index = PassageIndex.open(path)
    for q in ("《卷上·项强》这一篇收在哪本古籍里？", "请问“卷上·项强”一节出自哪部著作？"):
        hits = rag.retrieve(index, q, 2)
        assert [h.passage.id for h in hits][0] == "p1" and [h.rank for h in hits] == [1, 2], q
        assert rag.ground(index, q, 2).cited.id == "p1", q
    # a chapter's words asked about, not its book: searched within the chapter the question names (卷下/中风 says
    # 太阳中风 twice, 项强's second passage once)
    assert [h.passage.id for h in rag.retrieve(index, "《甲书》「卷上·项强」中是怎样论述“太阳中风”的？", 3)] == ["p2"]
    assert rag.retrieve(index, "《甲书》中是怎样论述“太阳中风”的？", 1)[0].passage.id == "p4"
    # a book whose one section bears its name is named as a book, not as a section
    q = "下面这句出自《医案》，横线处应是什么？若不当下者反下之，遂成____，以致闻者遂以下为戒。"
    assert rag.retrieve(index, q, 1)[0].passage.id == "p5"
    assert index.opening_of(Passage(id="x", book="乙书", section="卷上/项强", text="")) is None


def test_a_definition_asked_cites_the_passage_that_defines_the_word() -> None:
    """The demo's chat sample (session 21): three hits all sharing 冬温, the retriever's first a formula's 「治冬温…」;
    the answer quoted it, not the passage that says what 冬温 is."""
    formula = Passage(id="f:1-30", book="假托时病", section="卷八/备用成方", text="治冬温内寒外热，肢节疼痛。")
    defining = Passage(id="f:40-90", book="假托时病", section="卷八/冬温",
                       text="冬温虽发于冬时。昔贤谓冬应寒而反温，人感之而即病者，名曰冬温是也。")
    hits = [Hit(formula, 9.0, 1), Hit(defining, 8.0, 2)]
    assert cited_passage("《假托时病》中的“冬温”指的是什么？", hits) is defining
    assert cited_passage("什么叫冬温？", hits) is defining
    assert cited_passage("《假托时病》里提到冬温的原文是什么？", hits) is formula  # no definition asked: rank


def test_a_definition_asked_retrieves_the_passage_that_defines_the_word(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out questions of the demo (session 26): 「《伤寒明理论》是怎样界定“恶寒”的？」 retrieved the passages
    repeating 恶寒 most (「伤寒恶寒。…」), not the one saying 「恶寒者，啬啬然增寒也。」."""
    from qihuang.relevance import definitions_first

    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path / "home"))
    index = _index_of([{"id": f"p{i}", "book": "甲书", "section": s, "text": t} for i, (s, t) in enumerate([
        ("卷上/恶寒", "伤寒恶寒。恶寒而发热，恶寒而不发热，恶寒之甚者。"),
        ("卷上/发热", "发热恶寒，恶寒在表。"),
        ("卷上/恶寒", "恶寒者，啬啬然增寒也。")])], tmp_path)
    assert index.search("《甲书》是怎样界定“恶寒”的？", 1)[0].passage.id == "p0"  # BM25 alone
    for q in ("《甲书》是怎样界定“恶寒”的？", "什么叫恶寒？请依据《甲书》回答。"):
        assert [h.passage.id for h in rag.retrieve(index, q, 2)][0] == "p2", q
        assert rag.ground(index, q, 2).cited.id == "p2", q
    # no definition asked: BM25's order as before
    assert rag.retrieve(index, "《甲书》里提到恶寒的原文是什么？", 1)[0].passage.id == "p0"
    hits = index.search("恶寒", 3)
    assert [h.rank for h in definitions_first("何谓恶寒？", hits)] == [1, 2, 3]
