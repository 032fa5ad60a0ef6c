"""Sparse BM25 with numpy: character unigram+bigram (or jieba) term keys, built chunk by chunk into a CSC matrix of
BM25 weights (one column per term) that loads memory-mapped; a query sums its terms' columns."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qihuang.runs import write_json

SEGMENTATIONS = ("char", "jieba")
DEFAULT_SEGMENTATION = "char"
"""Chosen with benchmarks/retrieval_index.py (quote accuracy and build time of char vs jieba on the same
passages); needs no lexicon."""
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+|[A-Za-z0-9]+")
ASCII_WORD = re.compile(r"[A-Za-z0-9]+")
MAX_WORD = 8
K1, B = 1.5, 0.75
HASHED = 1 << 63


def term_key(token: str) -> int:
    """A token's 64-bit key: a character's code point, two BMP characters packed (a<<16|b), else a hash."""
    if len(token) == 1:
        return ord(token)
    if len(token) == 2 and ord(token[0]) < 0x10000 and ord(token[1]) < 0x10000:
        return (ord(token[0]) << 16) | ord(token[1])
    return HASHED | (int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little") >> 1)


def char_tokens(text: str) -> list[str]:
    """Character segmentation: every CJK character and every pair of neighbours; ASCII words lowercased."""
    out: list[str] = []
    for run in CJK.findall(text):
        if run.isascii():
            out.append(run.lower())
            continue
        out.extend(run)
        out.extend(run[i:i + 2] for i in range(len(run) - 1))
    return out


_SEG_LOCK = threading.Lock()


def jieba_segmenter(lexicon: Path | None) -> Any:
    """A private jieba tokenizer with `lexicon` loaded (built once per process and lexicon path)."""
    with _SEG_LOCK:
        return _jieba_segmenter(lexicon)


@functools.lru_cache(maxsize=8)
def _jieba_segmenter(lexicon: Path | None) -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    seg = jieba.Tokenizer()
    seg.initialize()
    if lexicon is not None and lexicon.exists():
        seg.load_userdict(str(lexicon))
    return seg


def jieba_tokens(text: str, segmenter: Any) -> list[str]:
    """jieba words (with the lexicon) plus every CJK character of multi-character words."""
    out: list[str] = []
    for run in CJK.findall(text):
        if run.isascii():
            out.append(run.lower())
            continue
        for word in segmenter.lcut(run, HMM=False):
            out.append(word)
            if len(word) > 1:
                out.extend(word)
    return out


def full_mode_candidates(text: str) -> list[str]:
    """Every substring of ≤ MAX_WORD chars starting at each CJK character (the character first), and each ASCII
    word lowercased, in text order: what a jieba-index query may match (`full_mode_tokens` keeps the known ones)."""
    out: list[str] = []
    for run in CJK.findall(text):
        if run.isascii():
            out.append(run.lower())
            continue
        for i in range(len(run)):
            out.append(run[i])
            out.extend(run[i:j] for j in range(i + 2, min(len(run), i + MAX_WORD) + 1))
    return out


def full_mode_tokens(text: str, vocab: Container[str]) -> list[str]:
    """Every known word (≤ MAX_WORD chars) starting at each character, plus the character (jieba-index queries)."""
    cands = full_mode_candidates(text)
    if isinstance(vocab, Vocab):  # one vectorised lookup instead of one per substring
        known = vocab.known(token_keys(cands))
        return [t for t, ok in zip(cands, known.tolist()) if ok]
    return [t for t in cands if t in vocab]


def char_keys(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 keys, int32 doc numbers) of every char-segmentation token of `texts`, vectorised over code points."""
    joined = "\n".join(texts) + "\n"
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    lens = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))
    doc = np.repeat(np.arange(len(texts), dtype=np.int32), lens)
    cjk = ((cps >= 0x3400) & (cps <= 0x9FFF)) | ((cps >= 0xF900) & (cps <= 0xFAFF))
    pair = cjk[:-1] & cjk[1:]
    keys = [cps[cjk].astype(np.uint64),
            (cps[:-1][pair].astype(np.uint64) << np.uint64(16)) | cps[1:][pair].astype(np.uint64)]
    docs = [doc[cjk], doc[:-1][pair]]
    del cps, cjk, pair
    words = [(m.start(), m.group().lower()) for m in ASCII_WORD.finditer(joined)]
    if words:
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        pos = np.fromiter((p for p, _ in words), dtype=np.int64, count=len(words))
        keys.append(np.fromiter((term_key(w) for _, w in words), dtype=np.uint64, count=len(words)))
        docs.append((np.searchsorted(starts, pos, side="right") - 1).astype(np.int32))
    return np.concatenate(keys), np.concatenate(docs)


def token_keys(tokens: Iterable[str]) -> np.ndarray:
    """Keys of tokens (duplicates kept)."""
    return np.fromiter((_cached_key(t) for t in tokens), dtype=np.uint64)


@functools.lru_cache(maxsize=1 << 20)
def _cached_key(token: str) -> int:
    return term_key(token)


class Vocab(Container[str]):
    """The index's terms (sorted keys): `token in vocab`, `vocab.ids(tokens)`."""

    def __init__(self, terms: np.ndarray) -> None:
        self.terms = terms

    def __len__(self) -> int:
        return len(self.terms)

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(column number or a neighbour, whether the key is in the index) for each key."""
        if not len(self.terms) or not len(keys):
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        pos = np.searchsorted(self.terms, keys)
        pos = np.minimum(pos, len(self.terms) - 1)
        return pos, self.terms[pos] == keys

    def ids(self, keys: np.ndarray) -> np.ndarray:
        """Column numbers of the keys that are in the index (unknown keys dropped)."""
        if not len(self.terms) or not len(keys):
            return np.zeros(0, dtype=np.int64)
        pos, hit = self._lookup(keys)
        return pos[hit]

    def known(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which keys are in the index."""
        return self._lookup(keys)[1]

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and bool(token) and len(self.ids(token_keys([token]))) > 0


@dataclass
class Bm25Matrix:
    """BM25 weights, CSC: column t holds (doc, weight) pairs of term `terms[t]` in indices/data[indptr[t]:...]."""

    terms: np.ndarray
    """Sorted uint64 term keys."""
    indptr: np.ndarray
    """int64, len(terms)+1."""
    indices: np.ndarray
    """int32 document numbers."""
    data: np.ndarray
    """float32 BM25 weights (idf and length normalisation folded in)."""
    n_docs: int
    """Number of documents."""
    stats: dict[str, Any] = field(default_factory=dict)
    """avgdl, k1, b, nnz."""

    FILES = ("terms", "indptr", "indices", "data")

    def save(self, folder: Path) -> None:
        """Write the four arrays (.npy) and matrix.json into `folder`."""
        for name in self.FILES:
            np.save(folder / f"{name}.npy", getattr(self, name))
        write_json(folder / "matrix.json", {"n_docs": self.n_docs, **self.stats})

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> Bm25Matrix:
        """Read a saved matrix (memory-mapped: only the columns a query touches are read)."""
        meta = json.loads((folder / "matrix.json").read_text(encoding="utf-8"))
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if mmap else None) for n in cls.FILES}
        return cls(n_docs=int(meta.pop("n_docs")), stats=meta, **arrays)

    @functools.cached_property
    def vocab(self) -> Vocab:
        """The matrix's terms as a Vocab (made once)."""
        return Vocab(self.terms)

    def top(self, keys: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(doc, score) of the k best documents for a query's term keys (each distinct term counted once)."""
        return self.top_ids(self.vocab.ids(np.unique(keys)), k)

    def top_ids(self, ids: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(doc, score) of the k best documents for a query's column numbers (each distinct column counted once);
        with `mask`, among the documents it marks only."""
        ids = np.unique(ids)
        if not len(ids) or k <= 0:
            return []
        acc = np.zeros(self.n_docs, dtype=np.float32)
        for t in ids.tolist():
            s, e = int(self.indptr[t]), int(self.indptr[t + 1])
            acc[self.indices[s:e]] += self.data[s:e]
        if mask is not None:
            acc[~mask] = 0.0
        k = min(k, self.n_docs)
        cand = np.argpartition(-acc, k - 1)[:k] if k < self.n_docs else np.arange(self.n_docs)
        cand = cand[np.lexsort((cand, -acc[cand]))]
        return [(int(d), float(acc[d])) for d in cand if acc[d] > 0]


class Bm25Builder:
    """Feed documents chunk by chunk (`add`), then `finish()` into a Bm25Matrix; memory ≈ 10 bytes per distinct
    (term, document) pair plus the final 8 bytes per pair."""

    def __init__(self, segmentation: str = DEFAULT_SEGMENTATION, lexicon: Path | None = None) -> None:
        if segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
        self.segmentation = segmentation
        self.lexicon = lexicon
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.lengths: list[np.ndarray] = []
        self.n_docs = 0

    def _keys(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.segmentation == "char":
            return char_keys(texts)
        seg = jieba_segmenter(self.lexicon)
        per_doc = [token_keys(jieba_tokens(t, seg)) for t in texts]
        docs = np.repeat(np.arange(len(texts), dtype=np.int32), [len(p) for p in per_doc])
        return (np.concatenate(per_doc) if per_doc else np.zeros(0, np.uint64)), docs

    def add(self, texts: list[str]) -> None:
        """Index one chunk of documents (numbered after those already added)."""
        if not texts:
            return
        keys, docs = self._keys(texts)
        n = len(texts)
        self.lengths.append(np.bincount(docs, minlength=n).astype(np.float32))
        ukeys, local = np.unique(keys, return_inverse=True)
        del keys
        pairs, tf = np.unique(local.astype(np.int64) * n + docs, return_counts=True)
        del local, docs
        self.chunks.append((ukeys, (pairs // n).astype(np.int32), (pairs % n + self.n_docs).astype(np.int32),
                            np.minimum(tf, 65535).astype(np.uint16)))
        self.n_docs += n

    def finish(self) -> Bm25Matrix:
        """Assemble the CSC matrix of BM25 weights (chunks are freed as they are copied in)."""
        if not self.n_docs:
            raise ValueError("no documents")
        terms = np.unique(np.concatenate([c[0] for c in self.chunks]))
        df = np.zeros(len(terms), dtype=np.int64)
        for i, (ukeys, local, docs, tf) in enumerate(self.chunks):
            gid = np.searchsorted(terms, ukeys).astype(np.int32)[local]
            self.chunks[i] = (ukeys, gid, docs, tf)
            df += np.bincount(gid, minlength=len(terms))
        indptr = np.concatenate(([0], np.cumsum(df))).astype(np.int64)
        nnz = int(indptr[-1])
        dl = np.concatenate(self.lengths)
        avgdl = float(dl.mean()) or 1.0
        norm = (K1 * (1 - B + B * dl / avgdl)).astype(np.float32)
        idf = np.log1p((self.n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        indices = np.empty(nnz, dtype=np.int32)
        data = np.empty(nnz, dtype=np.float32)
        cursor = indptr[:-1].copy()
        while self.chunks:
            _, gid, docs, tf = self.chunks.pop(0)
            bounds = np.flatnonzero(np.diff(gid)) + 1
            first = np.concatenate(([0], bounds))
            counts = np.diff(np.concatenate((first, [len(gid)])))
            rank = np.arange(len(gid)) - np.repeat(first, counts)
            pos = cursor[gid] + rank
            tf32 = tf.astype(np.float32)
            indices[pos] = docs
            data[pos] = idf[gid] * tf32 * (K1 + 1) / (tf32 + norm[docs])
            cursor[gid[first]] += counts
        self.lengths = []
        return Bm25Matrix(terms, indptr, indices, data, self.n_docs,
                          {"avgdl": round(avgdl, 3), "k1": K1, "b": B, "nnz": nnz})

