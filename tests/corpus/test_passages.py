"""Passages: spans index the cleaned book, never cross sections, end at sentence/paragraph boundaries."""

from __future__ import annotations

from qihuang.corpus.classics import parse_classic
from qihuang.corpus.passages import book_passages, cut_passages, layout
from qihuang.corpus.records import Book, Paragraph, Section
from tests.corpus.samples import COMMENTARY, SHANGHAN, classic

SENT = "太阳病，发热汗出，恶风脉缓者，名为中风。"  # 20 chars


def book_of(*sections: list[str]) -> Book:
    return Book(file="t.txt", title="t", sections=[
        Section(path=f"卷/{i}", title=str(i), paragraphs=[Paragraph([("body", p)]) for p in paras])
        for i, paras in enumerate(sections)])


def test_spans_slice_the_cleaned_text_and_respect_sections() -> None:
    book = parse_classic(classic("试寒论", SHANGHAN + COMMENTARY), "001-试寒论.txt", "x")
    book.category, book.dynasty = "伤寒金匮", "东汉"
    laid = layout(book)
    recs = book_passages(book, laid, target=60, limit=120)
    assert recs
    sections = {s.path for s in book.sections}
    for r in recs:
        assert laid.text[r["start"]:r["end"]] == r["text"]
        assert r["section"] in sections
        assert r["id"] == f"001-试寒论:{r['start']}-{r['end']}"
        assert r["text"][-1] in "。！？；）" and len(r["text"]) <= 120
        assert "\\x" not in r["text"]
    by_section: dict[str, list[dict]] = {}
    for r in recs:
        by_section.setdefault(r["section"], []).append(r)
    assert list(by_section) == [s.path for s in book.sections]  # in order, no passage spans two sections
    note = [n for r in recs for n in r["notes"]]
    assert note == [{"offset": note[0]["offset"], "text": "一本作先辨表里", "kind": "note"}]
    holder = next(r for r in recs if r["notes"])
    assert holder["text"][note[0]["offset"] - 3:note[0]["offset"]] == "之始。"


def test_target_length_and_sentence_ends() -> None:
    laid = layout(book_of([SENT * 10]))
    spans = cut_passages(laid, target=60, limit=100)
    assert [e - s for _, s, e in spans] == [60, 60, 60, 20]
    for _, s, e in spans:
        assert laid.text[e - 1] == "。"


def test_short_tail_joins_previous_passage() -> None:
    laid = layout(book_of([SENT * 3 + "是也。"]))
    spans = cut_passages(laid, target=60, limit=100)
    assert [(s, e) for _, s, e in spans] == [(2, 2 + 63)]


def test_overlong_sentence_cut_at_commas() -> None:
    long_sentence = "，".join(["寒热往来胸胁苦满"] * 30) + "。"
    laid = layout(book_of([long_sentence]))
    spans = cut_passages(laid, target=60, limit=100)
    assert len(spans) > 2
    assert all(e - s <= 100 for _, s, e in spans)
    assert "".join(laid.text[s:e] for _, s, e in spans) == long_sentence
    assert all(laid.text[e - 1] in "，。" for _, s, e in spans)


def test_paragraph_end_closes_a_passage_when_long_enough() -> None:
    laid = layout(book_of([SENT * 2, SENT * 2]))
    spans = cut_passages(laid, target=60, limit=100)
    texts = [laid.text[s:e] for _, s, e in spans]
    assert texts == [SENT * 2, SENT * 2]
