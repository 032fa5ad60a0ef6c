"""Classics parsing: header, sections, prefixes, notes as annotations, hard-wrap joining, markup debris."""

from __future__ import annotations

from collections import Counter

from qihuang.corpus.classics import join_lines, parse_classic, parse_year, split_notes
from tests.corpus.samples import HERBS, SHANGHAN, classic, wrap


def bodies(book) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.flatten()[0] for s in book.sections for p in s.paragraphs]


def test_header_sections_and_prefix() -> None:
    book = parse_classic(classic("试寒论", SHANGHAN, author="张某", dynasty="明·万历六年", year="公元1578年"),
                         "x.txt", "fallback")
    assert (book.title, book.author, book.dynasty, book.year) == ("试寒论", "张某", "明", 1578)
    assert [s.path for s in book.sections] == ["卷一/辨寒热篇", "卷一/辨虚实篇"]
    assert [s.title for s in book.sections] == ["辨寒热篇", "辨虚实篇"]
    text = "\n".join(bodies(book))
    assert "属性：" not in text and "<篇名>" not in text and "<目录>" not in text and "书名" not in text
    assert book.stats["prefixes_stripped"] == 2


def test_hard_wraps_joined_inside_paragraphs_only() -> None:
    book = parse_classic(classic("试寒论", SHANGHAN), "x.txt", "x")
    got = [bodies(book)[i] for i in range(5)]
    assert got[0] == SHANGHAN[0][1][0]  # three wrapped lines, broken mid-sentence, joined back
    assert got[1] == "甘草（二钱） 生姜（三片） 大枣（二枚）"  # an ingredient line stays its own paragraph
    assert got[2] == SHANGHAN[0][1][2]
    assert got[3] == SHANGHAN[1][1][0] and got[4] == SHANGHAN[1][1][1]
    assert book.stats["lines_joined"] > 0


def test_join_rules() -> None:
    stats: Counter[str] = Counter()
    lines = [s.rstrip() for s in wrap("甲" * 29 + "，乙乙乙乙。" + "丙" * 25)]
    assert len(lines) == 2
    # a line that starts with a comma continues the previous one even after a short line
    assert join_lines(["短句在此", "，续上文。"], 60, stats) == ["短句在此，续上文。"]
    # a short line ending a sentence closes the paragraph; an item marker starts a new one
    assert join_lines(["一句已完。", "另起一段。"], 60, stats) == ["一句已完。", "另起一段。"]
    assert join_lines(["甲" * 30, "1．新条目"], 60, stats) == ["甲" * 30, "1．新条目"]
    assert join_lines(lines + ["短尾。"], 60, stats) == ["".join(lines) + "短尾。"]


def test_notes_become_annotations() -> None:
    stats: Counter[str] = Counter()
    segs = split_notes("上三味，煮取一升。\\x此方出某书\\x其效甚捷。\\r附图\\ph12.bmp\\r完。", stats)
    assert segs == [("body", "上三味，煮取一升。"), ("note", "此方出某书"), ("body", "其效甚捷。"),
                    ("figure", "附图"), ("body", "完。")]
    assert stats["notes"] == 1 and stats["figures"] == 1


def test_unclosed_and_stray_markers_keep_the_body() -> None:
    stats: Counter[str] = Counter()
    segs = split_notes("又\\x石中黄子\\，乃余粮未成。", stats)
    body = "".join(t for k, t in segs if k == "body")
    assert body == "又石中黄子，乃余粮未成。"
    assert stats["unclosed_markers"] == 1 and stats["stray_backslashes"] == 1


def test_standalone_note_line_and_separators() -> None:
    book = parse_classic(classic("试药本草", HERBS, prefix="内容："), "x.txt", "x")
    assert [s.path for s in book.sections] == ["卷一/草部/黄芪", "卷一/草部/当归"]
    paras = book.sections[0].paragraphs
    body, notes = paras[1].flatten()
    assert body == HERBS[0][1][2] and notes == [{"offset": 0, "text": "按", "kind": "note"}]
    text = "\n".join(bodies(book))
    assert "@@@" not in text and "\\" not in text
    assert book.stats["separators"] == 1


def test_note_spanning_lines_and_markup_tags() -> None:
    raw = ("<篇名>书\n书名：书\n\n<目录>\n\n<篇名>序\n\n属性：序文一句已毕。 \n"
           "\\x某年某月某氏谨识于某处之某斋，时年七十有二，书此以为 \n记。\\x \n正文<1>再起。 \n")
    book = parse_classic(raw, "x.txt", "x")
    flat = [p.flatten() for p in book.sections[0].paragraphs]
    assert flat[0] == ("序文一句已毕。", [])
    assert flat[1][0] == "正文再起。"
    assert flat[1][1] == [{"offset": 0, "text": "某年某月某氏谨识于某处之某斋，时年七十有二，书此以为记。",
                           "kind": "note"}]
    assert book.stats["markup_tags"] == 1


def test_crlf_and_missing_header() -> None:
    raw = "<篇名>无头书\r\n\r\n<目录>卷一\r\r\n\n<篇名>一篇\r\n\r\n属性：有文无头，亦当收之。 \r\n"
    book = parse_classic(raw, "x.txt", "无头书")
    assert book.title == "无头书" and book.year is None and book.author == ""
    assert bodies(book) == ["有文无头，亦当收之。"]
    assert book.sections[0].path == "卷一/一篇"


def test_normalise_dynasty() -> None:
    from qihuang.corpus.classics import normalise_dynasty

    assert [normalise_dynasty(v) for v in ("明·万历六年", "唐代", "清朝", "元末明初", "")] == ["明", "唐", "清", "元末明初", ""]


def test_parse_year() -> None:
    assert parse_year("公元1144年") == 1144
    assert parse_year("公元25-220年") == 25
    assert parse_year("公元前200年") == -200
    assert parse_year("不详") is None
