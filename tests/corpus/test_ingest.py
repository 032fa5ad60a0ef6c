"""Ingest: encoding detection, replacement recording, bad files (binary, empty, unknown encoding, vanished)."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from qihuang.corpus.ingest import detect_and_decode, ingest_file, survey, title_from_name
from qihuang.corpus.records import RejectedFile
from tests.corpus.samples import SHANGHAN, classic

TEXT = "凡人初病，先辨寒热。寒者脉迟而口不渴，热者脉数而口渴。\n"


@pytest.mark.parametrize("encoded, expected", [
    (TEXT.encode("gbk"), "gb18030"),
    (TEXT.encode("gb18030"), "gb18030"),
    (TEXT.encode("utf-8"), "utf-8"),
    (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8-sig"),
    (TEXT.encode("utf-16"), "utf-16"),
    (TEXT.encode("utf-16-le"), "utf-16-le"),
])
def test_detects_encodings(encoded: bytes, expected: str) -> None:
    text, enc, bad = detect_and_decode(encoded, "x.txt")
    assert text == TEXT
    assert enc == expected
    assert bad == []


def test_records_each_replacement_with_byte_offset() -> None:
    good = "寒热虚实，辨证之纲。".encode("gbk")
    data = good + b"\xb52" + good + b"\xff" + good
    text, enc, bad = detect_and_decode(data, "x.txt")
    assert enc == "gb18030"
    assert bad == [len(good), 2 * len(good) + 2]
    assert text.count("\ufffd") == 2
    assert text.startswith("寒热虚实") and text.endswith("辨证之纲。")


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"  \n\n ", "empty"),
    (b"\x00\x01\x02\x03PK" * 100, "binary"),
    (b"\x80\x80abc\xff\x80" * 100, "unknown_encoding"),
])
def test_bad_bytes_are_rejected_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RejectedFile) as info:
        detect_and_decode(data, "bad.txt")
    assert info.value.reason == reason
    assert "bad.txt" in str(info.value)


def test_vanished_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(RejectedFile) as info:
        ingest_file(tmp_path / "gone.txt")
    assert info.value.reason == "vanished" and "gone.txt" in str(info.value)
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(b"%PDF")
    with pytest.raises(RejectedFile) as info:
        ingest_file(pdf)
    assert info.value.reason == "unsupported_type"


def test_ingest_gbk_classic_with_metadata(tmp_path: Path) -> None:
    p = tmp_path / "457-试寒论.txt"
    p.write_bytes(classic("试寒论", SHANGHAN, author="张某", dynasty="东汉", year="公元25-220年").encode("gbk"))
    book = ingest_file(p)
    assert (book.title, book.author, book.dynasty, book.year) == ("试寒论", "张某", "东汉", 25)
    assert book.encoding == "gb18030" and book.replacements == []
    assert [s.path for s in book.sections] == ["卷一/辨寒热篇", "卷一/辨虚实篇"]
    assert title_from_name(p) == "试寒论"


def test_no_text_after_parsing_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes("<篇名>空书\n书名：空书\n\n<目录>\n\n<篇名>序\n\n".encode("gbk"))
    with pytest.raises(RejectedFile) as info:
        ingest_file(p)
    assert info.value.reason == "no_text"


def test_survey_skips_and_lists_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / ".hidden.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("x")
    files, refused = survey(tmp_path)
    assert [p.name for p in files] == ["a.txt", "b.md"]
    assert [(p.name, reason) for p, reason, _ in refused] == [(".hidden.txt", "hidden")]
