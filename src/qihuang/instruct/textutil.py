"""Text helpers shared by the offline generators: sentences with offsets, CJK ratio, bracket balance, the TCM
lexicon scanner, section paths, and the Pair constructor with provenance."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qihuang.instruct.records import Pair, Passage

_SENT = re.compile(r"[^。！？；\n]*[。！？；]|[^。！？；\n]+")
JUNK = re.compile(r"[□\ue000-\uf8ff\ufffd]|KT|\\|\.bmp")
"""Missing-glyph boxes, private-use characters, markup remnants: text with these makes poor pairs."""
_CJK = re.compile(r"[\u4e00-\u9fff]")
CLAUSE_NO = re.compile(r"(?:(?<=[。！？）\s])|^)(\d{1,3})[．.、]\s*(?=[\u4e00-\u9fff])")


def sentences(text: str) -> list[tuple[int, int, str]]:
    """(start, end, sentence) for each sentence of `text` (split after 。！？；)."""
    out = []
    for m in _SENT.finditer(text):
        s = m.group(0)
        if s.strip():
            out.append((m.start(), m.end(), s))
    return out


def cjk_ratio(s: str) -> float:
    """Share of CJK characters in `s` (whitespace ignored)."""
    s = "".join(s.split())
    return len(_CJK.findall(s)) / len(s) if s else 0.0


@dataclass
class Lexicon:
    """TCM term set with a longest-match scanner (terms of 2..max_len characters)."""

    terms: frozenset[str]
    max_len: int = 8

    @classmethod
    def load(cls, path: Path | None) -> Lexicon:
        if path is None or not Path(path).exists():
            return cls(frozenset())
        terms = set()
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                w = line.split()[0] if line.split() else ""
                if 2 <= len(w) <= 8 and cjk_ratio(w) == 1.0:
                    terms.add(w)
        return cls(frozenset(terms), max(map(len, terms), default=2))

    def find(self, text: str) -> list[tuple[int, str]]:
        """Non-overlapping longest matches (offset, term), left to right."""
        out, i, n = [], 0, len(text)
        while i < n:
            hit = ""
            for L in range(min(self.max_len, n - i), 1, -1):
                if text[i : i + L] in self.terms:
                    hit = text[i : i + L]
                    break
            if hit:
                out.append((i, hit))
                i += len(hit)
            else:
                i += 1
        return out


def balanced(s: str) -> bool:
    """Brackets and quotes open and close in order."""
    for op, cl in (("（", "）"), ("“", "”"), ("(", ")"), ("「", "」"), ("《", "》")):
        depth = 0
        for ch in s:
            if ch == op:
                depth += 1
            elif ch == cl:
                depth -= 1
                if depth < 0:
                    return False
        if depth:
            return False
    return True


def trim_unbalanced(s: str) -> str:
    """Cut `s` before an unclosed （ or “ and strip a dangling tail, so snippets never end mid-note."""
    for op, cl in (("（", "）"), ("“", "”"), ("(", ")")):
        depth, cut = 0, None
        for i, ch in enumerate(s):
            if ch == op:
                if depth == 0:
                    cut = i
                depth += 1
            elif ch == cl and depth:
                depth -= 1
                if depth == 0:
                    cut = None
        if depth and cut is not None:
            s = s[:cut]
    return s.strip(" ，、；")


def make_pair(p: Passage, q: str, a: str, task: str, gen: str, span: tuple[int, int], **extra: object) -> Pair:
    return Pair(question=q, answer=a, passage_id=p.id, book=p.book, section=p.section, category=p.category,
                task_type=task, generator=f"offline:{gen}", span=span, dynasty=p.dynasty, extra=dict(extra))


def key_sentences(p: Passage, lo: int = 12, hi: int = 60) -> list[tuple[int, int, str]]:
    """Clean, self-contained sentences of lo..hi characters (start, end, sentence) usable as quotes."""
    return list(_key_sentences(p.text, lo, hi))


@lru_cache(maxsize=64)
def _key_sentences(text: str, lo: int, hi: int) -> tuple[tuple[int, int, str], ...]:
    out = []
    for s, e, t in sentences(text):
        t2 = re.sub(r"^\s*（[^（）]*）", "", t).strip()
        s += len(t) - len(t.lstrip()) + (len(t.strip()) - len(t2))
        if (lo <= len(t2) <= hi and cjk_ratio(t2) > 0.8 and not CLAUSE_NO.match(t2) and balanced(t2)
                and not JUNK.search(t2) and t2.count(" ") < 2):  # spaced lists are formula blocks, not prose
            out.append((s, e, t2))
    return tuple(out)


def section_parts(p: Passage) -> list[str]:
    """The section path's parts (`卷三/下经/人参` → [卷三, 下经, 人参]), brackets and colons stripped."""
    parts = [x.strip(" 【】[]:：") for x in re.split(r"[/／]", p.section)]
    return [x for x in parts if x]


def sec(p: Passage) -> str:
    """The section as shown in questions and answers (`卷三·下经·人参`)."""
    return "·".join(section_parts(p)) or p.section


def who(p: Passage) -> str:
    parts = [x for x in (p.dynasty, p.author) if x]
    return "·".join(parts)
