"""Normalise text segments as the config asks (and only that): words an upstream conversion put in the classics'
place, punctuation width, whitespace, optional traditional→simplified (OpenCC); every change is counted for the card."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any

from qihuang.corpus.records import Book, Paragraph

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_HALF_TO_FULL = {",": "，", ";": "；", ":": "：", "?": "？", "!": "！", "(": "（", ")": "）"}
# ASCII punctuation touching a Chinese character (or a full-width bracket) on either side
_HALF_PUNCT = re.compile(rf"(?<=[{_CJK}（）。，；：])[,;:?!()]|[,;:?!()](?=[{_CJK}（）])")
_ANY_HALF = re.compile(r"[,;:?!()]")
_ANY_SPACE = re.compile(r"[\t\u3000\u00a0]|[ ]{2}")
_SPACES = re.compile(r"[ \t\u3000\u00a0]{2,}|[\t\u3000\u00a0]")


REPAIRS = {"香港脚": "脚气", "香港腳": "腳氣"}
"""Words the upstream files carry in place of the classics' own: their simplified/traditional conversion wrote the
Hong Kong/Taiwan name of 脚气 (5,840 times in 339 of the 669 books, 377 section names: 「治香港脚」 in a Tang herbal),
while 脚气 itself is left 236 times. Other modern words of that kind (资讯, 软体, 程式, 马铃薯, 计程车 …) do not occur."""
MISSING_FU = re.compile(r"[ \u3000□]+咀")
"""㕮咀 (to chop a formula's herbs) with its 㕮 (U+356E, which GBK cannot encode) printed as a space or □:
「上五味 咀，以水五升」, 7,338 + 12 times in the files. No other word ends in 咀 after such a gap (「上为 咀」, 「上件
咀」, 「 咀片」); it is the one missing glyph the repair restores."""
_REPAIR = re.compile("香港[脚腳]")


def repair_words(text: str, stats: Counter[str]) -> str:
    """`text` with REPAIRS undone and MISSING_FU restored (counted as words_repaired)."""
    n = m = 0
    if "香港" in text:
        text, n = _REPAIR.subn(lambda g: REPAIRS[g.group()], text)
    if "咀" in text:
        text, m = MISSING_FU.subn("㕮咀", text)
    stats["words_repaired"] += n + m
    return text


@lru_cache(maxsize=1)
def _opencc() -> Any:
    from opencc import OpenCC

    return OpenCC("t2s")


def normalise_text(text: str, *, punctuation: str, collapse_spaces: bool, t2s: bool,
                   stats: Counter[str], repair: bool = True) -> str:
    """One string, normalised; counts go to `stats` (words_repaired, punct_fullwidth, ratio_colon, spaces_collapsed,
    t2s_chars)."""
    if repair:
        text = repair_words(text, stats)
    if punctuation == "fullwidth":
        if "∶" in text:
            stats["ratio_colon"] += text.count("∶")
            text = text.replace("∶", "：")
        if _ANY_HALF.search(text):
            text, n = _HALF_PUNCT.subn(lambda m: _HALF_TO_FULL[m.group()], text)
            stats["punct_fullwidth"] += n
    if collapse_spaces and _ANY_SPACE.search(text):
        text, n = _SPACES.subn(" ", text)
        stats["spaces_collapsed"] += n
    if t2s:
        new = _opencc().convert(text)
        if len(new) == len(text):
            stats["t2s_chars"] += sum(1 for a, b in zip(text, new) if a != b)
        else:
            stats["t2s_chars"] += abs(len(new) - len(text)) or 1
        text = new
    return text


def normalise_paragraph(p: Paragraph, **opts: Any) -> Paragraph:
    """Normalise each segment of a paragraph separately, so note anchors stay where they were."""
    segs = [(k, normalise_text(t, **opts)) for k, t in p.segments]
    # trim the paragraph's outer whitespace (leading/trailing body segments only)
    body_idx = [i for i, (k, _) in enumerate(segs) if k == "body"]
    if body_idx:
        first, last = body_idx[0], body_idx[-1]
        segs[first] = ("body", segs[first][1].lstrip(" "))
        segs[last] = ("body", segs[last][1].rstrip(" "))
    return Paragraph([(k, t) for k, t in segs if t or k != "body"])


def normalise_book(book: Book, *, punctuation: str, collapse_spaces: bool, t2s: bool, repair: bool = True) -> None:
    """Normalise all paragraphs (and, for `repair` and t2s, titles and section paths) in place."""
    opts = dict(punctuation=punctuation, collapse_spaces=collapse_spaces, t2s=t2s, stats=book.stats, repair=repair)
    for sec in book.sections:
        sec.paragraphs = [normalise_paragraph(p, **opts) for p in sec.paragraphs]
        if repair:
            sec.path, sec.title = repair_words(sec.path, book.stats), repair_words(sec.title, book.stats)
        if t2s:
            sec.path = _opencc().convert(sec.path)
            sec.title = _opencc().convert(sec.title)
    if t2s:
        book.title = _opencc().convert(book.title)
