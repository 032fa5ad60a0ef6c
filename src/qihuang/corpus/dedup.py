"""Passage-level deduplication: exact (hash of the text without punctuation and spaces) and near-duplicate
(datasketch MinHash LSH over character shingles). The first occurrence stays; each duplicate records its twin.
Shingle hashing is vectorised with numpy; signatures and the LSH index come from `qihuang.minhash` (datasketch)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qihuang.minhash import NearDupIndex

_KEEP = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffffA-Za-z0-9]")
_MAX_HASH = np.uint64((1 << 32) - 1)
_POLY = np.uint64(1000003)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_S29 = np.uint64(29)
_S32 = np.uint64(32)


def dedup_key(text: str) -> str:
    """The text reduced to characters that carry content (punctuation, spaces and markup dropped)."""
    return _KEEP.sub("", text)


def exact_hash(text: str) -> bytes:
    """16-byte digest of `dedup_key(text)`."""
    return hashlib.blake2b(dedup_key(text).encode("utf-8"), digest_size=16).digest()


def shingle_hashes(key: str, k: int) -> np.ndarray:
    """32-bit hashes of the character k-grams of `key` (vectorised polynomial hash)."""
    return _shingles_from_cps(np.frombuffer(key.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64), k)


def _shingles_from_cps(cps: np.ndarray, k: int) -> np.ndarray:
    if len(cps) == 0:
        return np.zeros(0, dtype=np.uint32)
    if len(cps) < k:
        k = len(cps)
    n = len(cps) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    # array arithmetic on unsigned integers wraps silently (no overflow warnings for arrays)
    for j in range(k):
        h = h * _POLY + cps[j:j + n]
    h ^= h >> _S29
    h *= _MIX
    h ^= h >> _S32
    return (h & _MAX_HASH).astype(np.uint32)  # duplicates do not change a minimum


def content_codepoints(cps: np.ndarray) -> np.ndarray:
    """The code points of `dedup_key` (Chinese characters, ASCII letters and digits) from a code point array."""
    from qihuang.corpus.filters import content_mask

    return cps[content_mask(cps)]


def signature(text: str, k: int = 5, num_perm: int = 64, seed: int = 0, cps: np.ndarray | None = None) -> np.ndarray:
    """MinHash signature (uint32 array of `num_perm`), computed as datasketch's affine32 MinHash.update_batch
    would for these shingle hashes; `cps` (the text's code points) saves re-encoding."""
    from qihuang.minhash import signatures

    if cps is None:
        hv = shingle_hashes(dedup_key(text), k)
    else:
        hv = _shingles_from_cps(content_codepoints(cps).astype(np.uint64), k)
    return signatures([hv], num_perm, seed)[0]


@dataclass
class Deduper:
    """Streaming deduplicator: call `check` on passages in priority order (earliest / canonical first)."""

    threshold: float = 0.8
    num_perm: int = 64
    seed: int = 0
    exact: dict[bytes, tuple[str, str]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    index: NearDupIndex = field(init=False)

    def __post_init__(self) -> None:
        self.index = NearDupIndex(self.threshold, self.num_perm, self.seed)

    def check(self, pid: str, book: str, digest: bytes, sig: np.ndarray | None) -> dict[str, Any] | None:
        """None if `pid` is new (and index it), else {'reason', 'twin', 'twin_book', 'similarity'};
        `digest` is `exact_hash(text)`, `sig` its MinHash signature (None: exact deduplication only)."""
        h = digest
        twin = self.exact.get(h)
        if twin is not None:
            self.stats["exact_duplicate"] += 1
            return {"reason": "exact_duplicate", "twin": twin[0], "twin_book": twin[1], "similarity": 1.0}
        self.exact[h] = (pid, book)
        if sig is None:
            return None
        best = self.index.nearest(sig)
        if best is not None:
            twin = str(best[0])
            self.stats["near_duplicate"] += 1
            return {"reason": "near_duplicate", "twin": twin, "twin_book": self.owners[twin],
                    "similarity": round(best[1], 3)}
        self.index.insert(pid, sig)
        self.owners[pid] = book
        return None
