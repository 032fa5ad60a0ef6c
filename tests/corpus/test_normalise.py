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
