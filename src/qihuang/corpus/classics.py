"""Parse the upstream classics format: header metadata, `<目录>`/`<篇名>` structure, `属性：`/`内容：` prefixes,
`\\x…\\x` notes and `\\r…\\r` figure captions as annotations, and hard-wrapped lines joined inside paragraphs."""

from __future__ import annotations

import re
from collections import Counter

from qihuang.corpus.records import Book, Paragraph, SegKind, Section

HEADER_KEYS = {"书名": "title", "作者": "author", "朝代": "dynasty", "年份": "year"}
_HEADER = re.compile(r"^(书名|作者|朝代|年份|建档|原著)[：:](.*)$")
_PREFIX = re.compile(r"^(属性|内容)[：:]")
_NUM_TAG = re.compile(r"<\d{1,2}>")
_YEAR = re.compile(r"(公元前|公元)?\s*(\d{1,4})")
_MARK = re.compile(r"\\x|\\r|\\p[^\\\s]{0,40}?\.(?:bmp|jpg|jpeg|gif|png)|\\")
_SEPARATOR = re.compile(r"^[@#＊*=\-—_]{3,}$")

# punctuation that cannot begin a sentence: a line starting with it continues the previous one
_CONT_START = set("，。、；：∶！？）」』》〕】…,.;:!?)”’")
# punctuation after which a sentence must go on
_CONT_END = set("，、：∶（《「『〔【“‘—,:(")
# sentence or item terminators
_TERMINAL = set("。！？；」』”’）】〕…!?;)")
_ITEM_START = re.compile(r"^(\d+[．.、]|[一二三四五六七八九十百]+[、．]|[（(][一二三四五六七八九十\d]+[）)]|[【〔○◎●△]|\\[xr])")
_PROSE = re.compile(r"[，。；：∶、！？]")
_BRACKETED = re.compile(r"（[^（）]*）|\([^()]*\)|【[^【】]*】|〔[^〔〕]*〕")
WRAP_MAX = 130
"""Lines wider than this (display columns) are unwrapped paragraphs, never hard wraps."""


def is_classic(text: str) -> bool:
    """Upstream classics files carry `<篇名>` section markers."""
    return "<篇名>" in text[:20000]


def display_width(s: str) -> int:
    """Columns as in the upstream wrap: CJK and other non-ASCII count 2, ASCII 1."""
    n = len(s)
    return n + (len(s.encode("utf-8", "surrogatepass")) - n) // 2


def parse_year(value: str) -> int | None:
    """`公元1144年` -> 1144, `公元25-220年` -> 25, `公元前200年` -> -200."""
    m = _YEAR.search(value)
    if not m:
        return None
    year = int(m.group(2))
    return -year if m.group(1) == "公元前" else year


def normalise_dynasty(value: str) -> str:
    """`明·万历六年` -> `明`, `唐代`/`清朝` -> `唐`/`清`; anything else as written."""
    value = value.split("·")[0].strip()
    if len(value) == 2 and value[1] in "代朝":
        return value[0]
    return value


def _should_join(prev: str, nxt: str, full: bool, before: list[str] | None = None) -> bool:
    """Is the line break between `prev` and `nxt` a hard wrap inside a paragraph? (`before`: the lines already
    joined into the current paragraph, prev last)"""
    if not prev or not nxt:
        return False
    if nxt[0] in _CONT_START:
        return True
    last = prev[-1]
    if last in _CONT_END:
        return True
    if _ITEM_START.match(nxt):
        return False
    if full:
        return True
    # a prose line (punctuation outside brackets) that stops on a character is cut mid-sentence: ragged wraps
    recent = (before or [prev])[-3:]
    return _is_cjk(last) and any(_PROSE.search(_BRACKETED.sub("", piece)) for piece in recent)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or ch >= "\U00020000"


def join_lines(lines: list[str], book_wrap: int, stats: Counter[str]) -> list[str]:
    """Join the hard-wrapped lines of one block (no blank lines inside) into paragraphs."""
    widths = [display_width(s) for s in lines]
    capped = [w if w <= WRAP_MAX else 0 for w in widths]
    valid = [0]
    for w in capped:
        valid.append(valid[-1] + (w > 0))
    paras: list[str] = []
    cur: list[str] = []
    for i, line in enumerate(lines):
        if not cur:
            cur.append(line)
            continue
        prev = lines[i - 1]
        lo, hi = max(0, i - 7), min(len(lines), i + 6)
        ref = max(capped[lo:hi]) if valid[hi] - valid[lo] >= 3 else book_wrap
        w = widths[i - 1]
        full = w <= WRAP_MAX and w >= 0.85 * ref
        if _should_join(prev, line, full, cur):
            cur.append(line)
            stats["lines_joined"] += 1
        else:
            paras.append("".join(cur))
            cur = [line]
    if cur:
        paras.append("".join(cur))
    return paras


def split_notes(text: str, stats: Counter[str]) -> list[tuple[SegKind, str]]:
    """Body/note segments of a paragraph: `\\x…\\x` -> note, `\\r…\\r` -> figure caption, `\\p….bmp` image
    references and stray backslashes are dropped (and counted); a marker never closed in the paragraph is stray."""
    if "\\" not in text:
        return [("body", text)]
    segs: list[tuple[SegKind, str]] = []
    pos = 0
    buf: list[str] = []
    marks = list(_MARK.finditer(text))
    i = 0
    while i < len(marks):
        m = marks[i]
        tok = m.group()
        buf.append(text[pos:m.start()])
        pos = m.end()
        if tok in ("\\x", "\\r"):
            j = next((k for k in range(i + 1, len(marks)) if marks[k].group() == tok), None)
            if j is None:
                stats["unclosed_markers"] += 1
                i += 1
                continue
            inner = text[m.end():marks[j].start()]
            inner = _MARK.sub("", inner) if tok == "\\x" else re.sub(r"\\p\S*?\.(?:bmp|jpg|jpeg|gif|png)|\\", "",
                                                                    inner)
            if buf:
                segs.append(("body", "".join(buf)))
                buf = []
            kind: SegKind = "note" if tok == "\\x" else "figure"
            segs.append((kind, inner.strip()))
            stats["notes" if kind == "note" else "figures"] += 1
            pos = marks[j].end()
            i = j + 1
            continue
        if tok.startswith("\\p"):
            stats["image_refs"] += 1
        else:
            stats["stray_backslashes"] += 1
        i += 1
    buf.append(text[pos:])
    if "".join(buf):
        segs.append(("body", "".join(buf)))
    return segs


def _book_wrap(lines: list[str]) -> int:
    ws = sorted(w for w in (display_width(s) for s in lines if s and not s.startswith("<")) if 20 <= w <= WRAP_MAX)
    if not ws:
        return 100
    return ws[int(0.9 * (len(ws) - 1))]


def _flush(section: Section | None, block: list[str], wrap: int, stats: Counter[str],
           pending: list[tuple[SegKind, str]]) -> None:
    """Turn a block of raw lines into paragraphs of `section` (standalone notes attach to the next paragraph)."""
    if section is None or not block:
        block.clear()
        return
    for para in join_lines(block, wrap, stats):
        segs = split_notes(para, stats)
        if not any(k == "body" and t.strip() for k, t in segs):
            pending.extend(s for s in segs if s[0] != "body" or s[1].strip())
            continue
        if pending:
            segs = pending + segs
            pending.clear()
        section.paragraphs.append(Paragraph(segs))
        stats["paragraphs"] += 1
    block.clear()


def parse_classic(text: str, name: str, fallback_title: str) -> Book:
    """Parse one upstream classics file into a Book with metadata, sections and paragraphs."""
    stats: Counter[str] = Counter()
    lines = [s.rstrip() for s in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    meta: dict[str, str] = {}
    wrap = _book_wrap(lines)
    sections: list[Section] = []
    toc: list[str] = []
    section: Section | None = None
    block: list[str] = []
    pending: list[tuple[SegKind, str]] = []
    at_body_start = False
    seen_toc = False
    for raw in lines:
        line = raw.rstrip()
        key = line.strip()
        if not key:
            _flush(section, block, wrap, stats, pending)
            continue
        if key.startswith("<目录>") or key.startswith("<篇名>"):
            line = key
        if line.startswith("<目录>"):
            _flush(section, block, wrap, stats, pending)
            seen_toc = True
            rest = line[len("<目录>"):].strip()
            toc = [p.strip() for p in rest.split("\\") if p.strip()] if rest else []
            stats["toc_lines"] += 1
            continue
        if line.startswith("<篇名>"):
            _flush(section, block, wrap, stats, pending)
            if section is not None and pending and section.paragraphs:
                section.paragraphs[-1].segments.extend(pending)
            pending.clear()
            title = line[len("<篇名>"):].strip() or "(untitled)"
            section = Section(path="/".join([*toc, title]), title=title)
            sections.append(section)
            stats["sections"] += 1
            at_body_start = True
            continue
        if not seen_toc:
            m = _HEADER.match(key)
            if m:
                field_name = HEADER_KEYS.get(m.group(1))
                if field_name and field_name not in meta:
                    meta[field_name] = m.group(2).strip()
                continue
        if _SEPARATOR.match(key):
            _flush(section, block, wrap, stats, pending)
            stats["separators"] += 1
            continue
        if at_body_start:
            line, n = _PREFIX.subn("", key)
            stats["prefixes_stripped"] += n
            at_body_start = False
        if _NUM_TAG.search(line):
            line, n = _NUM_TAG.subn("", line)
            stats["markup_tags"] += n
        if section is None:
            section = Section(path=fallback_title, title=fallback_title)
            sections.append(section)
        block.append(line)
    _flush(section, block, wrap, stats, pending)
    if pending and section is not None and section.paragraphs:
        section.paragraphs[-1].segments.extend(pending)
    book = Book(
        file=name,
        title=meta.get("title") or fallback_title,
        author=meta.get("author", ""),
        dynasty=normalise_dynasty(meta.get("dynasty", "")),
        year=parse_year(meta.get("year", "")),
        kind="classic",
        sections=[s for s in sections if s.paragraphs],
        stats=stats,
    )
    stats["wrap_width"] = wrap
    return book
