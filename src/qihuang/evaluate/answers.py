"""Per-answer checks of the system users get: degenerate (looping or empty) answers, answers that only echo the
question, citation accuracy, declining."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qihuang.retrieval import Passage
from qihuang.textmetrics import WORD_CHAR

LOOP_MIN_N, LOOP_MAX_N = 2, 8
"""Character n-gram sizes checked for back-to-back loops."""
LOOP_REPEATS = 3
"""An n-gram repeated this many times back to back is a loop."""
COVER_MIN_N = 4
"""Smallest n-gram size of the coverage rule (shorter ones such as `三两，` recur in honest lists)."""
COVER_SHARE = 0.4
"""A single n-gram (n in COVER_MIN_N..LOOP_MAX_N) occurring >= LOOP_REPEATS times and covering this share of the
answer's characters makes it degenerate."""
ECHO_SHARE = 0.8
"""An answer whose own content (its 《…》 titles left out) is at least this share a subsequence of the question only
repeats it: a non-answer, however much ROUGE-L it earns against references that quote the question."""
MIN_WORD_SHARE = 0.5
"""An answer (its 《…》 titles left out, at least GARBLE_MIN_CHARS long) whose characters are less than this share
CJK characters, letters or digits is punctuation noise (`“.““.““.“`)."""
GARBLE_MIN_CHARS = 8
"""Shortest answer body the punctuation-noise and code-point rules look at."""
CHAR_LIST_RUN = 6
"""This many single characters strung on a mark (`气·氣·水·氳·氢·氨`) are noise; honest lists of single
characters (`寒、热、温、凉`) are shorter."""
_CJK_CHAR = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_TITLES = re.compile(r"据?《[^《》\n]{1,40}(?:》[：:]?|[：:])")
"""A citation in an answer: 《…》 (with 据 and a colon), or an opening 据《… left unclosed before its colon."""
ATTRIBUTION_TYPES = ("出处", "篇名归属")
"""Question types that ask where a text comes from."""
_SECTION_SPLIT = re.compile(r"[/／·・]")


def _squeeze(text: str) -> str:
    return "".join(text.split())


def _has_loop(s: str) -> bool:
    for n in range(LOOP_MIN_N, LOOP_MAX_N + 1):
        span = n * LOOP_REPEATS
        for i in range(len(s) - span + 1):
            unit = s[i:i + n]
            if s[i + n:i + span] == unit * (LOOP_REPEATS - 1):
                return True
    return False


def _dominant_ngram(s: str) -> bool:
    for n in range(COVER_MIN_N, LOOP_MAX_N + 1):
        grams = Counter(s[i:i + n] for i in range(len(s) - n + 1))
        for gram, _ in grams.most_common(3):
            count = s.count(gram)  # non-overlapping occurrences
            if count >= LOOP_REPEATS and count * n >= COVER_SHARE * len(s):
                return True
    return False


def _shape_loop(s: str) -> bool:
    """Single characters strung on punctuation (`“上”：“工”：“治”：`, `气·氣·水·氳·氢·氨`): with every CJK character
    as one placeholder, a unit of one character and two or more different marks repeated LOOP_REPEATS times back to
    back, or of one character and one mark other than 、，。； (the marks of honest enumerations: 甲、乙、丙、丁…,
    心。肝。肺。) CHAR_LIST_RUN times."""
    shape = _CJK_CHAR.sub("X", s)
    for n in range(2, 7):
        times = LOOP_REPEATS if n > 2 else CHAR_LIST_RUN
        for i in range(len(shape) - n * times + 1):
            unit = shape[i:i + n]
            marks = unit.replace("X", "")
            noise_marks = len(set(marks)) > 1 if n > 2 else marks not in "、，,。；;"
            if unit.count("X") == 1 and not WORD_CHAR.search(marks) and noise_marks \
                    and shape[i + n:i + n * times] == unit * (times - 1):
                return True
    return False




def is_garbled(text: str) -> bool:
    """Whether an answer's own text (its 《…》 titles left out) is noise: mostly punctuation (MIN_WORD_SHARE), or
    single characters strung on punctuation (`_shape_loop`)."""
    body = _squeeze(body_of(text))
    if len(body) < GARBLE_MIN_CHARS:
        return False
    return len(WORD_CHAR.findall(body)) < MIN_WORD_SHARE * len(body) or _shape_loop(body)


def is_degenerate(text: str) -> bool:
    """Whether an answer is empty, stuck in a loop or noise (whitespace ignored).

    Rule: empty; or some character n-gram (n = 2..8) repeated >= 3 times back to back (`一两一两一两`); or a single
    n-gram of n = 4..8 characters occurring >= 3 times (non-overlapping) and covering >= 40% of the answer
    (`是一个文本，其是一个文本，其是一个文本`); or garbled (`is_garbled`: `“.““.““.“`, `气·氣·水·氳·氢·氨`,
    `“上”：“工”：“治”：`). Shorter recurring pieces (`三两，` in a formula list) do not count."""
    s = _squeeze(text)
    return not s or _has_loop(s) or _dominant_ngram(s) or is_garbled(text)


def _norm_section(section: str) -> list[str]:
    return [p.strip(" 【】[]:：「」") for p in _SECTION_SPLIT.split(section) if p.strip(" 【】[]:：「」")]


def section_matches(cited: str, gold: str) -> bool:
    """Whether a cited section names the gold section: equal after normalising separators (`卷三/人参` ~ `卷三·人参`),
    or equal to the gold path's last part, or a trailing run of its parts."""
    c, g = _norm_section(cited), _norm_section(gold)
    return bool(c) and bool(g) and g[-len(c):] == c


@dataclass
class Citation:
    """What an answer cites and whether it hits the gold book / section."""

    cited: list[tuple[str, str]]
    right_book: bool
    right_section: bool


def citation_accuracy(answer: str, book: str, section: str, passages: Sequence[Passage] = ()) -> Citation:
    """Citations of `answer` (`rag.cited_titles`: 《书名》, 《书名·篇名》, `[n]` resolved to the n-th prompt passage)
    scored against the gold book and section. Right book: some citation names the gold book. Right section: some
    citation names book and section; or the gold book is cited and the section's last part (>= 2 characters)
    appears in the answer quoted as 「…」, “…” or after `·` (how attribution answers name a chapter). No citation
    is wrong on both."""
    from qihuang.rag import cited_titles

    cited = cited_titles(answer, passages)
    book = book.strip()
    right_book = any(b == book for b, _ in cited)
    right_section = right_book and any(b == book and section_matches(s, section) for b, s in cited)
    parts = _norm_section(section)
    if right_book and not right_section and parts and len(parts[-1]) >= 2:
        last = re.escape(parts[-1])
        right_section = bool(re.search(f"「{last}」|“{last}”|·{last}", answer))
    return Citation(cited, right_book, right_section)


def body_of(answer: str) -> str:
    """An answer without its citations (`据《书名·篇名》：`, 《书名》): what it says of its own."""
    return _TITLES.sub("", answer)


def echoes_question(answer: str, question: str) -> bool:
    """Whether `answer` says nothing but (a part of) `question`, or nothing besides its citations (ECHO_SHARE)."""
    from qihuang.textmetrics import content_chars, lcs_coverage

    body = body_of(answer)
    if not content_chars(body):
        return True
    return bool(question) and lcs_coverage(body, question) >= ECHO_SHARE


def answer_flags(answer: str, item: dict[str, Any], passages: Sequence[Passage] = ()) -> dict[str, Any]:
    """Degenerate / echo / declined / citation fields of one answer to a held-out-book QA item."""
    from qihuang.rag import says_not_covered

    rec: dict[str, Any] = {"degenerate": is_degenerate(answer), "declined": says_not_covered(answer),
                           "echo": echoes_question(answer, str(item.get("question") or ""))}
    cit = citation_accuracy(answer, str(item.get("book") or ""), str(item.get("section") or ""), passages)
    rec["cited"] = [list(c) for c in cit.cited]
    if item.get("book") and item.get("source"):
        rec["right_book"], rec["right_section"] = cit.right_book, cit.right_section
    return rec
