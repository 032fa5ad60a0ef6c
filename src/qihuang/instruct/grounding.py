"""Grounding: how much of an answer is supported by its source passage.

`grounding_score(answer, passage, n)` is the stable public entry point (the evaluation stage imports it
for the faithfulness metric of #7).  Only CJK characters, Latin letters and digits count as content;
punctuation and whitespace are ignored.  The score is the mean of two coverages of the answer:

* n-gram coverage: the share of the answer's character n-grams that occur in the passage;
* LCS coverage: the length of the longest common subsequence of answer and passage divided by the
  answer length (rewards answers that follow the passage's order, tolerant of small edits).

An answer that only repeats a few passage characters in new order gets a low n-gram coverage; an answer
that paraphrases with the passage's vocabulary but rearranges it gets a middling LCS coverage.  A
fabricated answer scores low on both.
"""

from __future__ import annotations

import re
from functools import lru_cache

_CONTENT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffffA-Za-z0-9]")


def content_chars(text: str) -> str:
    """The text's content characters (CJK, letters, digits), punctuation and whitespace dropped."""
    return "".join(_CONTENT.findall(text or ""))


def char_ngrams(text: str, n: int) -> list[str]:
    """Character n-grams of already-cleaned `text` (the whole text when shorter than n)."""
    if not text:
        return []
    if len(text) < n:
        return [text]
    return [text[i : i + n] for i in range(len(text) - n + 1)]


@lru_cache(maxsize=256)
def passage_index(passage: str, n: int) -> tuple[str, frozenset[str]]:
    """(content characters, set of character n-grams) of a passage, memoized."""
    clean = content_chars(passage)
    return clean, frozenset(char_ngrams(clean, n))


def ngram_coverage(answer: str, passage: str, n: int = 2, cache: bool = True) -> float:
    """Share of the answer's content n-grams found in the passage (`cache`: memoize the passage's n-gram set,
    for passages scored against many answers)."""
    a = content_chars(answer)
    if not a:
        return 0.0
    if cache:
        clean, grams = passage_index(passage, n)
    else:
        clean = content_chars(passage)
        grams = frozenset(char_ngrams(clean, n))
    if not clean:
        return 0.0
    ag = char_ngrams(a, n)
    return sum(1 for g in ag if g in grams) / len(ag)


def lcs_length_dp(a: str, b: str) -> int:
    """Longest common subsequence length by the textbook dynamic programme (reference for tests/benchmarks)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(cur[j], prev[j + 1]))
        prev = cur
    return prev[-1]


@lru_cache(maxsize=256)
def _match_masks(b: str) -> tuple[dict[str, int], int]:
    masks: dict[str, int] = {}
    for j, ch in enumerate(b):
        masks[ch] = masks.get(ch, 0) | (1 << j)
    return masks, (1 << len(b)) - 1


def lcs_length(a: str, b: str) -> int:
    """LCS length with the bit-parallel algorithm (Allison–Dix / Hyyrö): O(len(a)) big-integer operations on
    len(b)-bit words, with `b`'s match masks cached (b is usually the passage)."""
    if not a or not b:
        return 0
    masks, full = _match_masks(b)
    v = full
    for ch in a:
        m = masks.get(ch)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def lcs_coverage(answer: str, passage: str) -> float:
    """LCS(answer, passage) / len(answer), over content characters."""
    a = content_chars(answer)
    p = passage_index(passage, 2)[0]
    if not a or not p:
        return 0.0
    return lcs_length(a, p) / len(a)


def grounding_score(answer: str, passage: str, n: int = 2) -> float:
    """Share of the answer's content supported by the passage, in [0, 1].

    Mean of character n-gram coverage and LCS coverage (see module docstring).  Empty answer or passage
    gives 0.0.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    ng = ngram_coverage(answer, passage, n)
    if ng == 0.0:
        return 0.0
    lc = lcs_coverage(answer, passage)
    return max(0.0, min(1.0, 0.5 * ng + 0.5 * lc))
