"""Normalisation changes only what the config asks for, counts it, and keeps note anchors."""

from __future__ import annotations

from collections import Counter

from qihuang.corpus.normalise import normalise_paragraph, normalise_text
from qihuang.corpus.records import Paragraph


def norm(text: str, **kw: object) -> tuple[str, Counter[str]]:
    stats: Counter[str] = Counter()
    opts = {"punctuation": "fullwidth", "collapse_spaces": True, "t2s": False, **kw}
    return normalise_text(text, stats=stats, **opts), stats  # type: ignore[arg-type]


def test_fullwidth_punctuation_next_to_chinese_only() -> None:
    out, stats = norm("太阳病,发热;恶寒(三日)。论曰∶善。Version 1.2, ok: yes")
    assert out == "太阳病，发热；恶寒（三日）。论曰：善。Version 1.2, ok: yes"
    assert stats["punct_fullwidth"] == 4 and stats["ratio_colon"] == 1


def test_keep_punctuation_changes_nothing() -> None:
    text = "太阳病,发热∶恶寒"
    out, stats = norm(text, punctuation="keep", collapse_spaces=False)
    assert out == text and sum(stats.values()) == 0


def test_spaces_collapse_but_single_space_kept() -> None:
    out, stats = norm("时螈 ；桂枝  芍药\u3000甘草")
    assert out == "时螈 ；桂枝 芍药 甘草"
    assert stats["spaces_collapsed"] == 2


def test_traditional_to_simplified_only_when_asked() -> None:
    assert norm("黃帝內經醫學")[0] == "黃帝內經醫學"
    out, stats = norm("黃帝內經醫學", t2s=True)
    assert out == "黄帝内经医学"
    assert stats["t2s_chars"] == 5  # 黃內經醫學


def test_paragraph_segments_normalised_separately() -> None:
    p = Paragraph([("body", " 桂枝,芍药"), ("note", "一作  桂心"), ("body", "甘草。 ")])
    body, notes = normalise_paragraph(p, punctuation="fullwidth", collapse_spaces=True, t2s=False,
                                      stats=Counter()).flatten()
    assert body == "桂枝，芍药甘草。"
    assert notes == [{"offset": 5, "text": "一作 桂心", "kind": "note"}]


def test_the_upstreams_conversion_words_are_repaired_in_text_and_section_names() -> None:
    """The raw files write 脚气 as 香港脚 (5,840 times in 339 books): 「治香港脚」 in a Tang herbal."""
    from qihuang.corpus.normalise import normalise_book
    from qihuang.corpus.records import Book, Section

    out, stats = norm("治腰以下至足湿热肿盛香港脚，补膀胱。香港腳")
    assert out == "治腰以下至足湿热肿盛脚气，补膀胱。腳氣" and stats["words_repaired"] == 2
    assert norm("香港脚", repair=False)[0] == "香港脚"
    out, stats = norm("上五味 咀，以水五升。上为□咀。地黄 咀片。含咀之。")  # GBK lost 㕮 (U+356E)
    assert out == "上五味㕮咀，以水五升。上为㕮咀。地黄㕮咀片。含咀之。" and stats["words_repaired"] == 3
    book = Book(file="x.txt", title="假托本草",
                sections=[Section("卷一/香港脚门", "香港脚门", [Paragraph([("body", "香港脚者，湿也。")])])])
    normalise_book(book, punctuation="fullwidth", collapse_spaces=True, t2s=False)
    sec = book.sections[0]
    assert (sec.path, sec.title, sec.paragraphs[0].segments) == ("卷一/脚气门", "脚气门", [("body", "脚气者，湿也。")])
    assert book.stats["words_repaired"] == 3
