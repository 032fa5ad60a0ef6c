"""Cross-book text overlap: each book's content characters are cut into 8-character shingles, hashed, and a
fixed 1/16 sample (hash % 16 == 0, the same shingles in every book) is kept as its fingerprint in the workers; the
parent attributes every sampled shingle to the first book (in processing order) that holds it. That estimates
e.g. how much of 伤寒论 reappears inside 注解伤寒论 even where commentary interleaves it and sentences differ."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qihuang.corpus.filters import codepoints, content_mask

SHINGLE = 8
"""Shingle length (content characters) for the overlap fingerprints."""
SAMPLE_MOD = 16
"""Keep shingles whose hash is 0 modulo this (each kept shingle stands for this many characters)."""

_POLY = np.uint64(1000003)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def text_fingerprints(text: str, k: int = SHINGLE, mod: int = SAMPLE_MOD) -> tuple[np.ndarray, np.ndarray]:
    """(distinct sampled uint64 shingle hashes, uint32 weights = characters each stands for) of `text`."""
    cps = codepoints(text)
    cps = cps[content_mask(cps)].astype(np.uint64)
    n = len(cps) - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint32)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):  # unsigned array arithmetic wraps silently
        h = h * _POLY + cps[j:j + n]
    h ^= h >> np.uint64(29)
    h *= _MIX
    h ^= h >> np.uint64(32)
    kept = np.unique(h[h % np.uint64(mod) == 0])
    return kept, np.full(len(kept), mod, dtype=np.uint32)


@dataclass
class TextOverlap:
    """Collects fingerprints book by book (in canonical order) and reports overlapping book pairs (chars are
    estimates: sampled shingles times their weight)."""

    hashes: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    books: list[str] = field(default_factory=list)

    def add(self, book: str, hashes: np.ndarray, lengths: np.ndarray) -> None:
        self.books.append(book)
        self.hashes.append(hashes)
        self.lengths.append(lengths)

    def report(self, top: int = 25, min_chars: int = 2000) -> list[dict[str, Any]]:
        """Book pairs (later book, earliest book holding the same text) by shared content characters."""
        if not self.books:
            return []
        h = np.concatenate(self.hashes) if self.hashes else np.zeros(0, dtype=np.uint64)
        n = np.concatenate(self.lengths).astype(np.int64)
        owner = np.concatenate([np.full(len(x), i, dtype=np.int64) for i, x in enumerate(self.hashes)])
        if len(h) == 0:
            return []
        order = np.lexsort((np.arange(len(h)), h))  # by hash, then by position (= processing order)
        hs = h[order]
        new_group = np.ones(len(hs), dtype=bool)
        new_group[1:] = hs[1:] != hs[:-1]
        first_owner = owner[order][np.maximum.accumulate(np.where(new_group, np.arange(len(hs)), 0))]
        later, earlier, size = owner[order], first_owner, n[order]
        repeat_in_book = np.zeros(len(hs), dtype=bool)  # the same shingle again in the same book counts once
        repeat_in_book[1:] = ~new_group[1:] & (later[1:] == later[:-1])
        mask = (later != earlier) & ~repeat_in_book
        nb = len(self.books)
        pair_chars = np.bincount(later[mask] * nb + earlier[mask], weights=size[mask], minlength=nb * nb)
        totals = np.bincount(owner, weights=n, minlength=nb)
        rows = []
        # the largest pairs by characters, then pairs where most of the earlier book reappears (e.g. a classic
        # inside its commentary), at least `min_chars` of it
        twin_share = pair_chars / np.maximum(1.0, np.tile(totals, nb))
        by_share = [c for c in np.argsort(-twin_share) if pair_chars[c] >= min_chars][:top]
        codes = list(dict.fromkeys([*np.argsort(-pair_chars)[:top].tolist(), *[int(c) for c in by_share]]))
        for code in codes:
            chars = int(pair_chars[code])
            if chars <= 0:
                continue
            a, b = divmod(int(code), nb)
            rows.append({"book": self.books[a], "twin_book": self.books[b], "chars": chars,
                         "share_of_book": round(float(chars / max(1.0, totals[a])), 4),
                         "share_of_twin": round(float(chars / max(1.0, totals[b])), 4)})
        return rows
