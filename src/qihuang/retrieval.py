"""Retrieval with citations: a BM25 index (bm25s) over the corpus passages, segmented with jieba + the TCM lexicon,
built once per corpus file and cached; queries are segmented against the index vocabulary so loading takes ms."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

from qihuang.config import ConfigError, qihuang_home

INDEX_VERSION = 2
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+|[A-Za-z0-9]+")
SENTENCE_END = re.compile(r"(?<=[。！？；!?;\n])")
MAX_WORD = 8


@dataclass(frozen=True)
class Passage:
    """A corpus passage (see the corpus stage's record shape); only the fields serving needs."""

    id: str
    book: str
    section: str
    text: str
    dynasty: str = ""
    category: str = ""
    start: int = 0
    end: int = 0

    @property
    def title(self) -> str:
        """《书名·篇名》."""
        return f"《{self.book}·{self.section}》" if self.section else f"《{self.book}》"


@dataclass(frozen=True)
class Hit:
    """A ranked search result."""

    passage: Passage
    score: float
    rank: int


def _lexicon_path() -> Path | None:
    try:
        from qihuang.config import data_file

        return data_file("lexicon/tcm_terms_62k.txt")
    except ConfigError:
        return None


_SEGMENTER: Any = None
_SEG_LOCK = threading.Lock()


def _jieba(lexicon: Path | None) -> Any:
    """A private jieba tokenizer with the TCM lexicon loaded (built once per process)."""
    global _SEGMENTER
    with _SEG_LOCK:
        if _SEGMENTER is None:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            seg = jieba.Tokenizer()
            seg.initialize()
            if lexicon is not None and lexicon.exists():
                seg.load_userdict(str(lexicon))
            _SEGMENTER = seg
        return _SEGMENTER


def index_tokens(text: str, segmenter: Any) -> list[str]:
    """Tokens of a passage: jieba words (with the lexicon) plus every CJK character (robust on classical text)."""
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


def query_tokens(text: str, vocab: dict[str, int] | set[str]) -> list[str]:
    """Full-mode segmentation against the index vocabulary: every known word starting at each character, plus
    the character itself (no jieba at query time)."""
    out: list[str] = []
    for run in CJK.findall(text):
        if run.isascii():
            out.append(run.lower())
            continue
        for i in range(len(run)):
            out.append(run[i])
            for j in range(i + 2, min(len(run), i + MAX_WORD) + 1):
                if run[i:j] in vocab:
                    out.append(run[i:j])
    return [t for t in out if t in vocab]


def _bigrams(text: str) -> set[str]:
    chars = "".join(CJK.findall(text))
    return {chars[i:i + 2] for i in range(len(chars) - 1)} | set(chars)


def best_span(text: str, query: str, max_chars: int = 120) -> tuple[int, int]:
    """(start, end) of the sentence run in `text` that best matches `query` (character bigram overlap)."""
    want = _bigrams(query)
    sentences: list[tuple[int, int]] = []
    pos = 0
    for part in SENTENCE_END.split(text):
        if part:
            sentences.append((pos, pos + len(part)))
            pos += len(part)
    if not sentences:
        return 0, 0
    best, best_score = sentences[0], -1.0
    for s, e in sentences:
        got = _bigrams(text[s:e])
        score = len(got & want) / (1 + len(got) ** 0.5)
        if score > best_score:
            best, best_score = (s, e), score
    s, e = best
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, min(e, s + max_chars)


def load_passages(path: Path) -> list[Passage]:
    """Read corpus passages (JSONL records with at least `id` and `text`)."""
    passages = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(r, dict) or "text" not in r:
                raise ConfigError(f"{path}:{lineno}: a passage needs at least `text` (and `id`, `book`, `section`)")
            passages.append(Passage(id=str(r.get("id", f"{path.stem}-{lineno}")), book=str(r.get("book", "")),
                                    section=str(r.get("section", "") or ""), text=str(r["text"]),
                                    dynasty=str(r.get("dynasty", "") or ""), category=str(r.get("category", "") or ""),
                                    start=int(r.get("start", 0) or 0), end=int(r.get("end", 0) or 0)))
    if not passages:
        raise ConfigError(f"{path}: no passages")
    return passages


def resolve_passages(spec: str | Path) -> Path:
    """A passages JSONL file, or a run dir (→ `corpus/train.jsonl`)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        cand = path / "corpus" / "train.jsonl"
        if cand.exists():
            return cand
        raise ConfigError(f"{path}: a run directory without corpus/train.jsonl")
    if not path.exists():
        raise ConfigError(f"{path}: passages file not found")
    return path


class PassageStore(Sequence[Passage]):
    """Passages of a cached index, read on demand from a JSONL file through an offsets array (fast to open)."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        self.path = path
        self.offsets = np.load(path.with_suffix(".offsets.npy"))
        self._fd = os.open(path, os.O_RDONLY)

    @staticmethod
    def write(folder: Path, passages: Sequence[Passage]) -> None:
        """Write `passages.jsonl` + `passages.offsets.npy` into `folder`."""
        import numpy as np

        offsets = [0]
        with open(folder / "passages.jsonl", "wb") as fh:
            for p in passages:
                fh.write(json.dumps(asdict(p), ensure_ascii=False).encode() + b"\n")
                offsets.append(fh.tell())
        np.save(folder / "passages.offsets.npy", np.asarray(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> Passage: ...

    @overload
    def __getitem__(self, i: slice) -> list[Passage]: ...

    def __getitem__(self, i: int | slice) -> Passage | list[Passage]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return Passage(**json.loads(os.pread(self._fd, end - start, start)))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            os.close(self._fd)


class PassageIndex:
    """BM25 over passages; `search(query, k)` returns ranked hits."""

    def __init__(self, passages: Sequence[Passage], retriever: Any, vocab: dict[str, int],
                 source: Path | None = None, load_seconds: float = 0.0) -> None:
        self.passages = passages
        self.retriever = retriever
        self.vocab = vocab
        self.source = source
        self.load_seconds = load_seconds
        self._by_id: dict[str, Passage] | None = None

    @property
    def by_id(self) -> dict[str, Passage]:
        """Passages by id (built on first use: a full scan)."""
        if self._by_id is None:
            self._by_id = {p.id: p for p in self.passages}
        return self._by_id

    @staticmethod
    def cache_dir_for(path: Path, lexicon: Path | None) -> Path:
        """Cache folder keyed by the corpus file (path, size, mtime) and the lexicon used."""
        st = path.stat()
        lex = f"{lexicon}:{lexicon.stat().st_size}" if lexicon is not None and lexicon.exists() else "none"
        key = f"v{INDEX_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{lex}"
        return qihuang_home() / "indexes" / hashlib.sha1(key.encode()).hexdigest()[:16]

    @classmethod
    def build(cls, passages: list[Passage], lexicon: Path | None = None, source: Path | None = None) -> PassageIndex:
        """Segment and index passages in memory."""
        import bm25s

        seg = _jieba(lexicon)
        corpus = [index_tokens(f"{p.book} {p.section} {p.text}", seg) or ["∅"] for p in passages]
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        vocab = dict(retriever.vocab_dict)
        return cls(passages, retriever, vocab, source)

    @classmethod
    def open(cls, spec: str | Path, lexicon: Path | None | str = "auto", rebuild: bool = False) -> PassageIndex:
        """Load the cached index of a corpus file (building and caching it the first time)."""
        import bm25s

        t0 = time.perf_counter()
        path = resolve_passages(spec)
        lex = _lexicon_path() if lexicon == "auto" else (Path(lexicon) if lexicon else None)
        cache = cls.cache_dir_for(path, lex)
        if not rebuild and (cache / "done").exists():
            retriever = bm25s.BM25.load(str(cache), show_progress=False, mmap=True)
            passages = PassageStore(cache / "passages.jsonl")
            return cls(passages, retriever, retriever.vocab_dict, path, time.perf_counter() - t0)
        index = cls.build(load_passages(path), lex, path)
        from qihuang.runs import atomic_path

        with atomic_path(cache) as tmp:
            index.retriever.save(str(tmp), show_progress=False)
            PassageStore.write(tmp, index.passages)
            (tmp / "source.json").write_text(json.dumps({"passages": str(path), "lexicon": str(lex)}),
                                             encoding="utf-8")
            (tmp / "done").write_text("", encoding="utf-8")
        index.load_seconds = time.perf_counter() - t0
        return index

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """Top-k passages for `query` (empty if no query term is in the index)."""
        import numpy as np

        tokens = query_tokens(query, self.vocab)
        if not tokens or k <= 0:
            return []
        k = min(k, len(self.passages))
        docs, scores = self.retriever.retrieve([tokens], k=k, show_progress=False, n_threads=0)
        hits = []
        for rank, (doc, score) in enumerate(zip(np.asarray(docs[0]).tolist(), np.asarray(scores[0]).tolist())):
            if score <= 0:
                continue
            hits.append(Hit(self.passages[int(doc)], float(score), rank + 1))
        return hits
