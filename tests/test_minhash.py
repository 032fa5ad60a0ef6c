"""The shared MinHash helper: batched signatures equal datasketch's affine32 MinHash; the LSH index confirms
candidates by estimated Jaccard and returns the most similar."""

from __future__ import annotations

import zlib

import numpy as np
from datasketch import MinHash

from qihuang.minhash import EMPTY, NearDupIndex, signatures, similarity


def _hashes(text: str, k: int = 3) -> np.ndarray:
    return np.fromiter((zlib.crc32(text[i:i + k].encode()) for i in range(len(text) - k + 1)), dtype=np.uint32)


TEXTS = ["太阳之为病，脉浮，头项强痛而恶寒。", "太阳之为病，脉浮，头项强痛而恶寒也。", "", "桂枝汤方：桂枝三两，芍药三两，甘草二两。"]


def test_batched_signatures_equal_datasketch_row_by_row() -> None:
    sigs = signatures([_hashes(t) for t in TEXTS], num_perm=64, seed=7)
    assert sigs.shape == (4, 64) and sigs.dtype == np.uint32
    for text, row in zip(TEXTS, sigs, strict=True):
        m = MinHash(num_perm=64, seed=7, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch([int(h) for h in _hashes(text)])
        assert np.array_equal(row, np.asarray(m.hashvalues, dtype=np.uint32))
    assert (sigs[2] == EMPTY).all() and signatures([], 64, 7).shape == (0, 64)


def test_near_duplicates_are_found_with_the_most_similar_twin() -> None:
    sigs = signatures([_hashes(t) for t in TEXTS], num_perm=128, seed=1)
    index = NearDupIndex(threshold=0.7, num_perm=128, seed=1)
    assert index.nearest(sigs[0]) is None
    index.insert("a", sigs[0])
    index.insert("c", sigs[3])
    key, sim = index.nearest(sigs[1]) or ("", 0.0)
    assert key == "a" and sim == similarity(sigs[0], sigs[1]) and 0.7 <= sim < 1.0
    assert index.nearest(signatures([_hashes("伤寒论辨太阳病脉证并治上第五")], 128, 1)[0]) is None
