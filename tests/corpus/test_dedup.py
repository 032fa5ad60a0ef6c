"""Deduplication: exact and near duplicates found with their twin; signatures agree with datasketch."""

from __future__ import annotations

from functools import partial

import numpy as np
from datasketch import MinHash

from qihuang.corpus.dedup import Deduper, dedup_key, exact_hash, shingle_hashes, signature

A = ("太阳病，头痛发热，汗出恶风者，桂枝汤主之。太阳病，项背强几几，反汗出恶风者，桂枝加葛根汤主之。"
     "太阳病，下之后，其气上冲者，可与桂枝汤，方用前法；若不上冲者，不得与之。")
B = ("阳明之为病，胃家实是也。问曰：何缘得阳明病？答曰：太阳病，若发汗，若下，若利小便，此亡津液，"
     "胃中干燥，因转属阳明。不更衣，内实，大便难者，此名阳明也。")


def test_signature_matches_datasketch() -> None:
    sig = signature(A, k=5, num_perm=64, seed=3)
    m = MinHash(num_perm=64, seed=3, scheme="affine32", hashfunc=lambda x: x)
    m.update_batch([int(h) for h in shingle_hashes(dedup_key(A), 5)])
    assert np.array_equal(m.hashvalues, sig)


def test_exact_duplicate_ignores_punctuation_and_spaces() -> None:
    d = Deduper(threshold=0.8, num_perm=64)
    assert d.check("a:0", "a.txt", exact_hash(A), signature(A)) is None
    twin = A.replace("，", ",").replace("。", " ")
    dup = d.check("b:0", "b.txt", exact_hash(twin), signature(twin))
    assert dup == {"reason": "exact_duplicate", "twin": "a:0", "twin_book": "a.txt", "similarity": 1.0}


def test_near_duplicate_found_and_different_text_kept() -> None:
    d = Deduper(threshold=0.7, num_perm=128)
    assert d.check("a:0", "a.txt", exact_hash(A), signature(A, num_perm=128)) is None
    assert d.check("c:0", "c.txt", exact_hash(B), signature(B, num_perm=128)) is None
    near = A.replace("桂枝汤主之", "桂枝汤主也")
    dup = d.check("b:5", "b.txt", exact_hash(near), signature(near, num_perm=128))
    assert dup is not None and dup["reason"] == "near_duplicate"
    assert dup["twin"] == "a:0" and dup["twin_book"] == "a.txt" and 0.7 <= dup["similarity"] < 1.0
    assert d.stats == {"near_duplicate": 1}


def test_text_overlap_attributes_to_first_book() -> None:
    from qihuang.corpus.overlap import TextOverlap, text_fingerprints

    ov = TextOverlap()
    u64 = partial(np.array, dtype=np.uint64)
    u32 = partial(np.array, dtype=np.uint32)
    ov.add("base.txt", u64([1, 2, 3]), u32([10, 10, 20]))
    ov.add("commentary.txt", u64([1, 9, 3, 3]), u32([10, 50, 20, 20]))  # 1 and 3 (twice) come from base
    ov.add("third.txt", u64([9, 7]), u32([50, 10]))  # 9 first appeared in commentary
    rows = ov.report()
    assert rows[1] == {"book": "commentary.txt", "twin_book": "base.txt", "chars": 30, "share_of_book": 0.3,
                       "share_of_twin": 0.75}
    assert rows[0]["book"] == "third.txt" and rows[0]["twin_book"] == "commentary.txt" and rows[0]["chars"] == 50
    assert len(rows) == 2

    base = "太阳之为病脉浮头项强痛而恶寒太阳病发热汗出恶风脉缓者名为中风" * 4
    h1, w1 = text_fingerprints(base, k=4, mod=2)
    h2, _ = text_fingerprints("注曰此言太阳经病之提纲" + base[:40] + "其义甚明", k=4, mod=2)
    assert len(h1) and set(h1.tolist()) & set(h2.tolist()) and set(w1.tolist()) == {2}
    assert len(np.unique(h1)) == len(h1)
