"""Passage-level deduplication: exact (hash of the text without punctuation and spaces) and near-duplicate
(datasketch MinHash LSH over character shingles). The first occurrence stays; each duplicate records its twin.
Shingle hashing is vectorised with numpy; the MinHash permutations and the LSH index are datasketch's."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

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


@lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b) for this num_perm and seed."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def _fmix32(hv: np.ndarray) -> np.ndarray:
    """datasketch's pre-mix of input hashes (MurmurHash3 32-bit finaliser)."""
    from datasketch import minhash as dm

    fmix = getattr(dm, "_fmix", None)
    if fmix is not None:
        return fmix(hv, 32)
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


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
    if cps is None:
        hv = shingle_hashes(dedup_key(text), k)
    else:
        hv = _shingles_from_cps(content_codepoints(cps).astype(np.uint64), k)
    if len(hv) == 0:
        return np.full(num_perm, np.uint32(0xFFFFFFFF), dtype=np.uint32)
    a, b = _permutations(num_perm, seed)
    phv = _fmix32(hv)[:, None] * a[None, :] + b[None, :]
    return phv.min(axis=0)


@dataclass
class Deduper:
    """Streaming deduplicator: call `check` on passages in priority order (earliest / canonical first)."""

    threshold: float = 0.8
    num_perm: int = 64
    seed: int = 0
    exact: dict[bytes, tuple[str, str]] = field(default_factory=dict)
    sigs: dict[str, np.ndarray] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    lsh: Any = None

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)

    def _minhash(self, sig: np.ndarray) -> Any:
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")

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
        mh = self._minhash(sig)
        best: tuple[float, str] | None = None
        for cand in self.lsh.query(mh):
            sim = float(np.mean(self.sigs[cand] == sig))
            if sim >= self.threshold and (best is None or sim > best[0]):
                best = (sim, cand)
        if best is not None:
            self.stats["near_duplicate"] += 1
            return {"reason": "near_duplicate", "twin": best[1], "twin_book": self.owners[best[1]],
                    "similarity": round(best[0], 3)}
        self.lsh.insert(pid, mh, check_duplication=False)
        self.sigs[pid] = sig
        self.owners[pid] = book
        return None
