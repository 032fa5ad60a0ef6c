"""Lay a book out as cleaned text (section title, paragraphs, blank line) and cut it into passages of a target
length that never cross a section and end at sentence (。！？；) or paragraph boundaries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from qihuang.corpus.ingest import book_key
from qihuang.corpus.records import Book

_SENT_END = re.compile(r"[。！？；!?;][”’」』）)]*")
_SOFT_BREAK = re.compile(r"[，、：,:]")


Unit = tuple[int, int, bool]
"""A sentence (or the tail of a paragraph): (start, end, ends_paragraph) in the cleaned book."""


@dataclass
class LaidOut:
    """The cleaned book text and, per section, its sentence units and notes (absolute offsets)."""

    text: str
    sections: list[tuple[str, list[Unit]]] = field(default_factory=list)
    notes: list[tuple[int, str, str]] = field(default_factory=list)


def layout(book: Book) -> LaidOut:
    """Cleaned text of `book`: each section's title on a line, its paragraphs one per line, a blank line after."""
    parts: list[str] = []
    pos = 0
    out = LaidOut(text="")
    for sec in book.sections:
        title = sec.title.replace("\n", " ")
        parts.append(title + "\n")
        pos += len(title) + 1
        units: list[Unit] = []
        for para in sec.paragraphs:
            body, notes = para.flatten()
            body = body.replace("\n", " ")
            for n in notes:
                out.notes.append((pos + int(n["offset"]), str(n["text"]), str(n["kind"])))
            if body:
                last = 0
                for m in _SENT_END.finditer(body):
                    units.append((pos + last, pos + m.end(), False))
                    last = m.end()
                if last < len(body):
                    units.append((pos + last, pos + len(body), True))
                else:
                    units[-1] = (units[-1][0], units[-1][1], True)
            parts.append(body + "\n")
            pos += len(body) + 1
        parts.append("\n")
        pos += 1
        out.sections.append((sec.path, units))
    out.text = "".join(parts)
    return out


def _cut_long(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Cut an over-long sentence at commas (or anywhere, if it has none) into pieces of at most `limit`."""
    pieces: list[tuple[int, int]] = []
    s = start
    while end - s > limit:
        window = text[s:s + limit]
        cuts = [m.end() for m in _SOFT_BREAK.finditer(window)]
        cut = cuts[-1] if cuts and cuts[-1] > limit // 3 else limit
        pieces.append((s, s + cut))
        s += cut
    pieces.append((s, end))
    return pieces


def cut_passages(laid: LaidOut, target: int, limit: int) -> list[tuple[str, int, int]]:
    """(section path, start, end) for each passage; spans index `laid.text`."""
    out: list[tuple[str, int, int]] = []
    text = laid.text
    for path, units in laid.sections:
        first_of_section = len(out)
        cur_start: int | None = None
        cur_end = 0
        for u_start, u_end, u_para_end in units:
            pieces = [(u_start, u_end)] if u_end - u_start <= limit else _cut_long(text, u_start, u_end, limit)
            for i, (s, e) in enumerate(pieces):
                is_para_end = u_para_end and i == len(pieces) - 1
                if cur_start is not None and e - cur_start > limit:
                    out.append((path, cur_start, cur_end))
                    cur_start = None
                if cur_start is not None and e - cur_start > target and cur_end - cur_start >= target // 2:
                    out.append((path, cur_start, cur_end))
                    cur_start = None
                if cur_start is None:
                    cur_start = s
                cur_end = e
                length = cur_end - cur_start
                if length >= target or (is_para_end and length >= int(0.6 * target)):
                    out.append((path, cur_start, cur_end))
                    cur_start = None
        if cur_start is not None:
            prev = out[-1] if out and out[-1][0] == path and first_of_section < len(out) else None
            if prev is not None and cur_end - cur_start < target // 4 and cur_end - prev[1] <= limit:
                out[-1] = (path, prev[1], cur_end)  # a short tail joins the passage before it
            else:
                out.append((path, cur_start, cur_end))
    return out


def book_passages(book: Book, laid: LaidOut, target: int, limit: int) -> list[dict[str, Any]]:
    """Passage records (without dedup/filter decisions) for a laid-out book."""
    stem = book_key(book.file)
    spans = cut_passages(laid, target, limit)
    notes = laid.notes
    ni = 0
    records: list[dict[str, Any]] = []
    for k, (path, start, end) in enumerate(spans):
        next_start = spans[k + 1][1] if k + 1 < len(spans) else -1
        while ni < len(notes) and notes[ni][0] < start:
            ni += 1
        j = ni
        pnotes: list[dict[str, Any]] = []
        while j < len(notes) and (notes[j][0] < end or (notes[j][0] == end and next_start != end)):
            off, ntext, kind = notes[j]
            pnotes.append({"offset": off - start, "text": ntext, "kind": kind})
            j += 1
        records.append({
            "id": f"{stem}:{start}-{end}",
            "book": book.title,
            "book_file": book.file,
            "category": book.category,
            "dynasty": book.dynasty,
            "author": book.author,
            "year": book.year,
            "section": path,
            "start": start,
            "end": end,
            "text": laid.text[start:end],
            "notes": pnotes,
        })
    return records
