"""Parse plain inputs: UTF-8 `.txt` (blank-line paragraphs), `.md` (headings are sections) and JSONL records
(`text` plus optional `title`/`book`, `author`, `dynasty`, `section`)."""

from __future__ import annotations

import json
import re
from collections import Counter

from qihuang.corpus.classics import join_lines, split_notes
from qihuang.corpus.records import Book, Paragraph, RejectedFile, Section

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_NOISE = re.compile(r"^(```.*|---+|\*\*\*+|<!--.*-->)$")
_LATIN_END = re.compile(r"[A-Za-z0-9]$")


def _paragraphs(lines: list[str], stats: Counter[str]) -> list[Paragraph]:
    """Blank-line separated blocks; wrapped lines inside a block are joined (a space between Latin words)."""
    out: list[Paragraph] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        if any(_LATIN_END.search(s) for s in block):
            paras = [" ".join(s.strip() for s in block)]
        else:
            paras = join_lines([s.strip() for s in block], 100, stats)
        for p in paras:
            if p.strip():
                out.append(Paragraph(split_notes(p, stats) if "\\x" in p else [("body", p)]))
                stats["paragraphs"] += 1
        block.clear()

    for line in lines:
        if line.strip():
            block.append(line.rstrip())
        else:
            flush()
    flush()
    return out


def parse_plain(text: str, name: str, title: str) -> Book:
    """A plain text file: one section, blank-line paragraphs."""
    stats: Counter[str] = Counter()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff").split("\n")
    sec = Section(path=title, title=title, paragraphs=_paragraphs(lines, stats))
    stats["sections"] += 1
    return Book(file=name, title=title, kind="text", sections=[sec] if sec.paragraphs else [], stats=stats)


def parse_markdown(text: str, name: str, title: str) -> Book:
    """A Markdown file: headings open sections (path = heading chain), the first level-1 heading is the title."""
    stats: Counter[str] = Counter()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff").split("\n")
    sections: list[Section] = []
    chain: list[tuple[int, str]] = []
    buf: list[str] = []
    book_title = title

    def flush() -> None:
        paras = _paragraphs(buf, stats)
        buf.clear()
        if not paras:
            return
        path = "/".join(t for _, t in chain) or book_title
        sections.append(Section(path=path, title=chain[-1][1] if chain else book_title, paragraphs=paras))
        stats["sections"] += 1

    for line in lines:
        m = _MD_HEADING.match(line.strip())
        if m:
            flush()
            level, heading = len(m.group(1)), m.group(2)
            if level == 1 and book_title == title and not sections and not chain:
                book_title = heading
                continue
            chain = [(lv, t) for lv, t in chain if lv < level] + [(level, heading)]
            continue
        if _MD_NOISE.match(line.strip()):
            stats["markup_lines"] += 1
            continue
        buf.append(line)
    flush()
    return Book(file=name, title=book_title, kind="markdown", sections=sections, stats=stats)


def parse_jsonl(text: str, name: str, title: str) -> Book:
    """JSONL: one record per line with `text`; records become sections; bad lines are counted, not fatal."""
    stats: Counter[str] = Counter()
    sections: list[Section] = []
    meta: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            stats["bad_json_lines"] += 1
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            stats["records_without_text"] += 1
            continue
        for key in ("author", "dynasty", "category"):
            if isinstance(rec.get(key), str) and key not in meta:
                meta[key] = rec[key]
        book = rec.get("book") or rec.get("title")
        if isinstance(book, str) and "title" not in meta:
            meta["title"] = book
        sec_name = rec.get("section") or rec.get("title") or f"#{lineno}"
        paras = _paragraphs(rec["text"].split("\n"), stats)
        if paras:
            sections.append(Section(path=str(sec_name), title=str(sec_name), paragraphs=paras))
            stats["sections"] += 1
    if not sections and stats["bad_json_lines"]:
        raise RejectedFile(name, "bad_jsonl", f"no valid JSON records ({stats['bad_json_lines']} bad lines)")
    return Book(file=name, title=meta.get("title", title), author=meta.get("author", ""),
                dynasty=meta.get("dynasty", ""), category=meta.get("category", ""), kind="jsonl",
                sections=sections, stats=stats)
