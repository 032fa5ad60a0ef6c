"""Text metrics on characters, one owner for every stage (instruct filters, SFT probes, eval, the answer guard):
word characters, character n-grams, longest common subsequence, ROUGE-L and BLEU-4 (through `rouge_chinese` and
`sacrebleu`, on characters: Chinese needs no segmenter), and grounding — how much of an answer a passage supports.

`grounding_score(answer, passage, n)` is the mean of two coverages of the answer's word characters (CJK, letters,
digits; punctuation and whitespace ignored):

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

from collections.abc import Sequence

WORD_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffffA-Za-z0-9]")
"""A character that carries words: CJK (extensions included), letters, digits — not punctuation or whitespace."""


SENTENCE_MARKS = "。！？；!?;\n"
"""Characters that end a sentence (a line break too: classical text and answers break lines between sentences)."""
SENTENCE_MARK = re.compile(f"[{SENTENCE_MARKS}]")


def sentence_end_before(text: str, stop: int, start: int = 0) -> int | None:
    """Index just past the last sentence mark of `text[start:stop]`, or None when it has none."""
    ends = [m.end() for m in SENTENCE_MARK.finditer(text, start, stop)]
    return ends[-1] if ends else None


def content_chars(text: str) -> str:
    """The text's word characters (`WORD_CHAR`), punctuation and whitespace dropped."""
    return "".join(WORD_CHAR.findall(text or ""))


def chars(text: str) -> list[str]:
    """The text's characters less whitespace: the units ROUGE-L, BLEU-4 and answer lengths count."""
    return [c for c in text if not c.isspace()]


def rouge_l(hypothesis: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (`rouge_chinese` on space-separated characters); 0.0 if either is empty."""
    from rouge_chinese import Rouge

    h, r = chars(hypothesis), chars(reference)
    if not h or not r:
        return 0.0
    return float(Rouge(metrics=["rouge-l"]).get_scores(" ".join(h), " ".join(r))[0]["rouge-l"]["f"])


def bleu4(hypotheses: Sequence[str], references: Sequence[str], smooth: bool = False) -> float:
    """Corpus BLEU-4 on characters (0-100, `sacrebleu` with `tokenize="char"`), one reference per hypothesis;
    `smooth` adds 1 to the counts of n > 1 (Lin & Och, sacrebleu's add-k), for single sentences."""
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"bleu4: {len(hypotheses)} hypotheses but {len(references)} references")
    hyps = ["".join(chars(h)) for h in hypotheses]
    if not any(hyps):
        return 0.0
    refs = ["".join(chars(r)) for r in references]
    metric = BLEU(tokenize="char", smooth_method="add-k" if smooth else "none", effective_order=False)
    return float(metric.corpus_score(hyps, [refs]).score)


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
