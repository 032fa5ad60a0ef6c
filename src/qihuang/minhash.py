"""MinHash near-duplicate detection on datasketch's public API, one helper for corpus dedup and instruct refine:
signatures of many texts at once from their 32-bit shingle hashes (what datasketch's affine32 `MinHash.update_batch`
gives for those hashes, vectorised with numpy) and an LSH index that confirms candidates by estimated Jaccard."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

EMPTY = np.uint32(0xFFFFFFFF)
"""Every value of the signature of a text without shingles (datasketch's initial hash values)."""


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a, b) for `num_perm` and `seed` (`MinHash.permutations`)."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, which datasketch's affine32 scheme applies to each input hash first."""
    hv = hv.astype(np.uint32, copy=True)
    hv ^= hv >> np.uint32(16)
    hv *= np.uint32(0x85EBCA6B)
    hv ^= hv >> np.uint32(13)
    hv *= np.uint32(0xC2B2AE35)
    hv ^= hv >> np.uint32(16)
    return hv


def signatures(hashes: Sequence[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, one row (uint32 × `num_perm`) per array of 32-bit shingle hashes, all in one numpy pass;
    a text without shingles gets the all-EMPTY row."""
    out = np.full((len(hashes), num_perm), EMPTY, dtype=np.uint32)
    rows = [i for i, h in enumerate(hashes) if len(h)]
    if not rows:
        return out
    a, b = permutations(num_perm, seed)
    hv = fmix32(np.concatenate([np.asarray(hashes[i], dtype=np.uint32) for i in rows]))
    starts = np.cumsum([0] + [len(hashes[i]) for i in rows[:-1]])
    phv = hv[:, None] * a[None, :] + b[None, :]  # uint32 arithmetic wraps: mod 2^32, as datasketch's affine32
    out[rows] = np.minimum.reduceat(phv, starts, axis=0)
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity estimated from two signatures."""
    return float(np.mean(a == b))


class NearDupIndex:
    """datasketch `MinHashLSH` over signatures from `signatures`: `nearest` returns the most similar indexed key
    whose estimated Jaccard reaches the threshold (LSH candidates below it are false positives and ignored)."""

    def __init__(self, threshold: float, num_perm: int, seed: int) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.seed = seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sigs: dict[Hashable, np.ndarray] = {}

    def _minhash(self, sig: np.ndarray) -> Any:
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")

    def nearest(self, sig: np.ndarray) -> tuple[Hashable, float] | None:
        """(key, estimated Jaccard) of the most similar indexed signature at or above the threshold, else None."""
        best: tuple[Hashable, float] | None = None
        for key in self.lsh.query(self._minhash(sig)):
            sim = similarity(self.sigs[key], sig)
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (key, sim)
        return best

    def insert(self, key: Hashable, sig: np.ndarray) -> None:
        """Index `sig` under `key` (keys must be new)."""
        self.lsh.insert(key, self._minhash(sig), check_duplication=False)
        self.sigs[key] = sig
