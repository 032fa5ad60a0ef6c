"""Retrieval with citations: a BM25 index over the corpus passages (character unigrams + bigrams by default, or
jieba + the TCM lexicon), built once per passages file and cached under a key made from the file's content."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from qihuang.bm25 import (CJK, DEFAULT_SEGMENTATION, SEGMENTATIONS, Bm25Builder, Bm25Matrix, char_tokens,
                          full_mode_candidates, full_mode_tokens, token_keys)
from qihuang.config import ConfigError, qihuang_home
from qihuang.runs import atomic_path, sha256_file, sweep_stale_temps, write_json
from qihuang.scope import BookScope, Labels, SectionScope, marks_place, strip_sections, strip_titles

INDEX_VERSION = 4
"""Bumped when an index folder's format changes (4: stored passages carry their book's author)."""
SEARCH_VERSION = 4
"""Bumped when `PassageIndex.search` ranks differently for the same index (2: a named book scopes the search; 3: so
does a named section, and `rag.retrieve` puts passages quoting the question first; 4: a formula name is no quotation
of a passage, a text printed twice is one hit), so results cached on search (eval rows) are recomputed."""
SENTENCE_END = re.compile(r"(?<=[。！？；!?;\n])")
CHUNK_DOCS = 8192
RUN_FILES = ("library.jsonl", "train.jsonl")
"""Passages files of a run's corpus stage, in order of preference (the whole library, else the training books)."""
__all__ = ["CJK", "Hit", "Passage", "PassageIndex", "best_span", "query_tokens", "resolve_passages"]


@dataclass(frozen=True)
class Passage:
    """A corpus passage (see the corpus stage's record shape); only the fields serving needs."""

    id: str
    """Passage id (`<book file stem>:<start>-<end>`)."""
    book: str
    """Book title."""
    section: str
    """Section (篇名) title."""
    text: str
    """Passage text."""
    dynasty: str = ""
    """Dynasty of the book."""
    category: str = ""
    """Category of the book."""
    author: str = ""
    """Author of the book (as its header gives it)."""
    start: int = 0
    """Start offset in the cleaned book."""
    end: int = 0
    """End offset in the cleaned book."""

    @property
    def title(self) -> str:
        """《书名·篇名》."""
        return f"《{self.book}·{self.section}》" if self.section else f"《{self.book}》"


@dataclass(frozen=True)
class Hit:
    """A ranked search result."""

    passage: Passage
    """The passage."""
    score: float
    """BM25 score."""
    rank: int
    """1-based rank."""


def _lexicon_path() -> Path | None:
    try:
        from qihuang.config import data_file

        return data_file("lexicon/tcm_terms_62k.txt")
    except ConfigError:
        return None


def query_tokens(text: str, vocab: Any, segmentation: str = "jieba") -> list[str]:
    """Query tokens that are in the index vocabulary: char n-grams, or (jieba) every known word at each character."""
    if segmentation == "char":
        return [t for t in char_tokens(text) if t in vocab]
    return full_mode_tokens(text, vocab)


def char_bigrams(text: str) -> set[str]:
    """Every CJK character and every pair of neighbours of `text` (its words and numbers joined)."""
    chars = "".join(CJK.findall(text))
    return {chars[i:i + 2] for i in range(len(chars) - 1)} | set(chars)


SHORT_BIGRAMS = 8
"""A sentence with fewer character bigrams is scored as if it had this many: a fragment (「麦门」 where a passage
breaks off mid-sentence) sharing one bigram with the question must not outrank the sentences that answer it."""


def best_span(text: str, query: str, max_chars: int = 120,
              rank: Callable[[str], int] | None = None) -> tuple[int, int]:
    """(start, end) of the sentence run in `text` that best matches `query` (character bigram overlap, divided by
    the square root of the sentence's bigrams, at least SHORT_BIGRAMS); with `rank`, a sentence it ranks higher
    comes first whatever its overlap (`relevance.quote_span`: the words a question marks, a definition asked)."""
    want = char_bigrams(query)
    sentences: list[tuple[int, int]] = []
    pos = 0
    for part in SENTENCE_END.split(text):
        if part:
            sentences.append((pos, pos + len(part)))
            pos += len(part)
    if not sentences:
        return 0, 0
    best, best_score = sentences[0], (-1, -1.0)
    for s, e in sentences:
        got = char_bigrams(text[s:e])
        score = (rank(text[s:e]) if rank is not None else 0,
                 len(got & want) / (1 + max(len(got), SHORT_BIGRAMS) ** 0.5))
        if score > best_score:
            best, best_score = (s, e), score
    s, e = best
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, min(e, s + max_chars)


COPIED_CHARS = 6
"""Characters an answer must copy from a passage in one run for `copied_span` to show the words it copied."""


def copied_span(text: str, answer: str, max_chars: int = 120) -> tuple[int, int] | None:
    """(start, end) of the sentences of `text` holding the longest run of characters `answer` copies from it (at
    least COPIED_CHARS): the quotation a citation shows is the one the answer used (not the sentence of the
    passage closest to the question); None where the answer copies less."""
    import difflib

    m = difflib.SequenceMatcher(None, text, answer, autojunk=False).find_longest_match(0, len(text), 0, len(answer))
    if len("".join(CJK.findall(text[m.a:m.a + m.size]))) < COPIED_CHARS:
        return None
    starts = [0] + [b.end() for b in SENTENCE_END.finditer(text, 0, m.a) if b.end() <= m.a]
    s = max(x for x in starts if x <= m.a)
    e = m.a + m.size
    if text[m.a:e].rstrip("）)」』”]〕 ")[-1:] not in "。！？；!?;\n":  # the copy stops mid-sentence: finish it
        end = SENTENCE_END.search(text, e)
        e = end.end() if end else len(text)
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, min(e, s + max_chars)


def iter_passages(path: Path) -> Iterator[Passage]:
    """Passages of a JSONL file (records with at least `text`; ConfigError names the bad line)."""
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
            yield Passage(id=str(r.get("id", f"{path.stem}-{lineno}")), book=str(r.get("book", "")),
                          section=str(r.get("section", "") or ""), text=str(r["text"]),
                          dynasty=str(r.get("dynasty", "") or ""), category=str(r.get("category", "") or ""),
                          author=str(r.get("author", "") or ""), start=int(r.get("start", 0) or 0),
                          end=int(r.get("end", 0) or 0))


def run_index_choice(run_dir: Path) -> dict[str, Any]:
    """What a run's index stage chose (`index/index.json`: passages file name, segmentation), or {}."""
    path = run_dir / "index" / "index.json"
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def resolve_passages(spec: str | Path) -> Path:
    """A passages JSONL file, or a run dir (→ the file its index stage used, else `corpus/library.jsonl`, else
    `corpus/train.jsonl`)."""
    return _resolve(spec)[0]


def _resolve(spec: str | Path) -> tuple[Path, dict[str, Any]]:
    """(passages file, the run's index choice ({} unless `spec` is a run dir)): index.json is read once."""
    path = Path(spec).expanduser()
    if path.is_dir():
        choice = run_index_choice(path)
        chosen = choice.get("passages")
        for name in ([chosen] if chosen else []) + list(RUN_FILES):
            cand = path / "corpus" / name
            if cand.exists():
                return cand, choice
        raise ConfigError(f"{path}: a run directory without corpus/library.jsonl or corpus/train.jsonl")
    if not path.exists():
        raise ConfigError(f"{path}: passages file not found")
    return path, {}


def passages_fingerprint(path: Path) -> str:
    """sha256 of a passages file's bytes, rehashed only when its size, mtime or inode changed since it was last
    hashed (remembered in `qihuang_home()/index-fingerprints/`, one small file per resolved path)."""
    path = Path(path)
    real = str(path.resolve())
    memo = qihuang_home() / "index-fingerprints" / f"{hashlib.sha1(real.encode()).hexdigest()[:16]}.json"
    before = os.stat(path)
    stamp = [before.st_size, before.st_mtime_ns, before.st_ino]
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        seen = json.loads(memo.read_text(encoding="utf-8"))
        if seen["path"] == real and seen["stamp"] == stamp and len(seen["sha256"]) == 64:
            return str(seen["sha256"])
    digest = sha256_file(path)
    after = os.stat(path)
    if [after.st_size, after.st_mtime_ns, after.st_ino] == stamp:  # not written to while it was hashed
        with contextlib.suppress(OSError):
            write_json(memo, {"path": real, "stamp": stamp, "sha256": digest})
    return digest


class PassageStore(Sequence[Passage]):
    """Passages of a cached index, read on demand from a JSONL file through an offsets array (fast to open)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets = np.load(path.with_suffix(".offsets.npy"))
        self._fd = os.open(path, os.O_RDONLY)

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


def _read_meta(folder: Path) -> dict[str, Any]:
    """meta.json of a finished index folder; ConfigError if the folder is missing or unfinished."""
    if not folder.is_dir():
        raise ConfigError(f"index {folder}: no such folder (build it with `qihuang index build` or "
                          "`qihuang search --passages FILE`)")
    if not (folder / "done").exists() or not (folder / "meta.json").exists():
        raise ConfigError(f"index {folder}: not a finished index (no `done`/meta.json); rebuild it")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if meta.get("version") != INDEX_VERSION:
        raise ConfigError(f"index {folder}: format version {meta.get('version')}, this qihuang reads "
                          f"{INDEX_VERSION}; rebuild it")
    return dict(meta)


def index_text(p: Passage) -> str:
    """The text a passage is indexed under: book title, section title and body."""
    return f"{p.book} {p.section} {p.text}"


def build_index_folder(path: Path, folder: Path, segmentation: str, lexicon: Path | None,
                       fingerprint: str, lexicon_hash: str | None | bool = False) -> dict[str, Any]:
    """Stream `path` in chunks into `folder` (passages.jsonl + offsets, the BM25 matrix, meta.json, `done`);
    `lexicon_hash` is `_lexicon_hash(lexicon)` when the caller already has it (False: compute it here)."""
    t0 = time.perf_counter()
    builder = Bm25Builder(segmentation, lexicon)
    offsets = [0]
    books: list[str] = []
    sections: list[str] = []
    with open(folder / "passages.jsonl", "wb") as out:
        batch: list[Passage] = []
        for p in iter_passages(path):
            out.write(json.dumps(asdict(p), ensure_ascii=False).encode() + b"\n")
            offsets.append(out.tell())
            books.append(p.book)
            sections.append(p.section)
            batch.append(p)
            if len(batch) == CHUNK_DOCS:
                builder.add([index_text(q) for q in batch])
                batch = []
        builder.add([index_text(q) for q in batch])
    if builder.n_docs == 0:
        raise ConfigError(f"{path}: no passages")
    np.save(folder / "passages.offsets.npy", np.asarray(offsets, dtype=np.int64))
    BookScope.of_books(books).save(folder)
    SectionScope.of_sections(sections).save(folder)
    matrix = builder.finish()
    matrix.save(folder)
    meta = {"version": INDEX_VERSION, "segmentation": segmentation, "fingerprint": fingerprint,
            "source": path.name, "source_path": str(path.resolve()),
            "lexicon": ((_lexicon_hash(lexicon) if lexicon_hash is False else lexicon_hash)
                        if segmentation == "jieba" else None),
            "passages": builder.n_docs, "terms": len(matrix.terms), "nnz": matrix.stats["nnz"],
            "build_seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    write_json(folder / "meta.json", meta)
    (folder / "done").write_text("", encoding="utf-8")
    return meta


def _lexicon_hash(lexicon: Path | None) -> str | None:
    return sha256_file(lexicon)[:16] if lexicon is not None and lexicon.exists() else None


class PassageIndex:
    """BM25 over passages; `search(query, k)` returns ranked hits. `open()` builds once and caches."""

    def __init__(self, passages: Sequence[Passage], matrix: Bm25Matrix, segmentation: str = DEFAULT_SEGMENTATION,
                 source: Path | None = None, load_seconds: float = 0.0, meta: dict[str, Any] | None = None) -> None:
        self.passages = passages
        self.matrix = matrix
        self.vocab = matrix.vocab
        self.segmentation = segmentation
        self.source = source
        self.load_seconds = load_seconds
        self.meta = meta or {}
        self.built = False
        self._by_id: dict[str, Passage] | None = None

    @property
    def by_id(self) -> dict[str, Passage]:
        """Passages by id (built on first use: a full scan)."""
        if self._by_id is None:
            self._by_id = {p.id: p for p in self.passages}
        return self._by_id

    @staticmethod
    def cache_key(fingerprint: str, lexicon: Path | None, segmentation: str = DEFAULT_SEGMENTATION,
                  lexicon_hash: str | None | bool = False) -> str:
        """Cache folder name: the passages' content, the lexicon's content (jieba only), segmentation, version
        (`lexicon_hash`: `_lexicon_hash(lexicon)` when the caller already has it)."""
        lex = ((_lexicon_hash(lexicon) if lexicon_hash is False else lexicon_hash)
               if segmentation == "jieba" else None)
        key = f"v{INDEX_VERSION}|{segmentation}|{fingerprint}|{lex}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    @classmethod
    def load(cls, folder: Path, source: Path | None = None, t0: float | None = None,
             meta: dict[str, Any] | None = None) -> PassageIndex:
        """Open a finished index folder (arrays memory-mapped, passages read on demand); `meta`: its meta.json
        when the caller has already read it with `_read_meta`."""
        t0 = time.perf_counter() if t0 is None else t0
        meta = _read_meta(folder) if meta is None else meta
        passages = PassageStore(folder / "passages.jsonl")
        index = cls(passages, Bm25Matrix.load(folder), meta["segmentation"], source, 0.0, {**meta, "dir": str(folder)})
        index.load_seconds = time.perf_counter() - t0
        return index

    @classmethod
    def open(cls, spec: str | Path, lexicon: Path | None | str = "auto", rebuild: bool = False,
             segmentation: str | None = None, index_dir: Path | None = None) -> PassageIndex:
        """The index of a passages file or run dir: `index_dir` if given (it must hold the index of exactly this
        file), else the cache folder keyed by the file's content (built and cached the first time)."""
        t0 = time.perf_counter()
        path, choice = _resolve(spec)
        if segmentation is None:
            segmentation = choice.get("segmentation")
        seg = segmentation or DEFAULT_SEGMENTATION
        if seg not in SEGMENTATIONS:
            raise ConfigError(f"segmentation must be one of {list(SEGMENTATIONS)}, got {seg!r}")
        fingerprint = passages_fingerprint(path)
        if index_dir is not None:
            meta = _read_meta(Path(index_dir))
            if meta.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"index {index_dir} was built from {meta.get('source')} "
                    f"(sha256 {str(meta.get('fingerprint'))[:12]}…) but the passages file {path} has sha256 "
                    f"{fingerprint[:12]}…: a different file; rebuild the index or pass its passages")
            return cls.load(Path(index_dir), path, t0, meta)
        lex = _lexicon_path() if lexicon == "auto" else (Path(lexicon) if lexicon else None)
        lex_hash = _lexicon_hash(lex) if seg == "jieba" else None
        cache = qihuang_home() / "indexes" / cls.cache_key(fingerprint, lex, seg, lex_hash)
        if rebuild or not (cache / "done").exists():
            sweep_stale_temps(cache.parent)  # what killed builds (kill -9) of any index left behind
            with atomic_path(cache) as tmp:
                tmp.mkdir(parents=True, exist_ok=True)
                build_index_folder(path, tmp, seg, lex, fingerprint, lex_hash)
            index = cls.load(cache, path, t0)
            index.built = True
            return index
        return cls.load(cache, path, t0)

    def _labels(self, files: tuple[str, str], field: str, required: bool) -> Labels:
        """Each passage's `field` (saved with the index; an older index folder is scanned once and given it)."""
        store = self.passages
        if not isinstance(store, PassageStore):
            return Labels.of_values(str(getattr(p, field)) for p in store)
        folder = store.path.parent
        labels = Labels.load(folder, files)
        if labels is None:
            labels = Labels.of_jsonl(store.path, field, required)
            with contextlib.suppress(OSError):
                labels.save(folder, files)
        return labels

    @functools.cached_property
    def scope(self) -> BookScope:
        """Each passage's book, and the passages of the books a query names."""
        return BookScope(self._labels(BookScope.FILES, "book", required=True))

    @functools.cached_property
    def sections(self) -> SectionScope:
        """Each passage's section, and the passages of the sections a query names."""
        return SectionScope(self._labels(SectionScope.FILES, "section", required=False))

    def _term_ids(self, query: str) -> np.ndarray:
        if self.segmentation == "char":
            return self.vocab.ids(np.unique(token_keys(char_tokens(query))))
        return self.vocab.ids(token_keys(full_mode_candidates(query)))  # every substring that may be a word

    def search(self, query: str, k: int = 5, scoped: bool = True) -> list[Hit]:
        """Top-k passages for `query` (empty if no query term is in the index). A query naming a known book
        (《书名》, 《书名·篇名》) is searched among that book's passages on its other words — among those of the
        chapter it names too, where it names one of that book by its path (《本草思辨录》「卷一·黄芩」中关于…的论述);
        one naming a section (《卷上·项强》, 「阿胶」, “卷四·蛴螬”) among the passages of the sections of that name;
        when none of them matches there, or with `scoped=False`, over the whole index as written."""
        if k <= 0:
            return []
        top: list[tuple[int, float]] = []
        mask = self.scope.mask(query) if scoped and "《" in query else None
        if mask is not None:
            terms = strip_titles(query)
            chapter = self.sections.mask(query, paths=True)
            if chapter is not None and (mask & chapter).any():
                mask = mask & chapter
                top = self.matrix.top_ids(self._term_ids(strip_sections(terms)), k, mask) or self._first_of(mask, k)
            else:
                top = self.matrix.top_ids(self._term_ids(terms), k, mask)
        if not top and scoped and marks_place(query):
            mask = self.sections.mask(query)
            if mask is not None:
                ids = self._term_ids(strip_sections(query))
                top = self.matrix.top_ids(ids, k, mask) or self._first_of(mask, k)
        if not top:
            top = self.matrix.top_ids(self._term_ids(query), k)
        return [Hit(self.passages[doc], score, rank) for rank, (doc, score) in enumerate(top, 1)]

    def search_within(self, query: str, mask: np.ndarray, k: int) -> list[Hit]:
        """Top-k among the passages `mask` marks, on `query`'s terms; the first k marked passages (score 1.0) when
        none of them matches a term."""
        top = self.matrix.top_ids(self._term_ids(query), k, mask) or self._first_of(mask, k)
        return [Hit(self.passages[doc], score, rank) for rank, (doc, score) in enumerate(top, 1)]

    @functools.cached_property
    def openers(self) -> np.ndarray:
        """Whether each passage opens its section (the first of its book and section in index order): a formula's
        or herb's entry head — its composition, its 性味 and 主治."""
        book, section = self.scope.doc_book, self.sections.doc_section
        first = np.ones(len(section), dtype=bool)
        first[1:] = (section[1:] != section[:-1]) | (book[1:] != book[:-1])
        return first

    def opening_of(self, passage: Passage) -> Passage | None:
        """The first passage of `passage`'s section in its book (index order): what a reader quotes to show which
        section it is; None for a passage without a section or one the index does not hold."""
        book = self.scope.labels.number(passage.book)
        section = self.sections.labels.number(passage.section)
        if not passage.section or book is None or section is None:
            return None
        docs = np.flatnonzero((self.scope.doc_book == book) & (self.sections.doc_section == section))
        return self.passages[int(docs[0])] if len(docs) else None

    @staticmethod
    def _first_of(mask: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The first k passages a mask marks (a named section's opening passages), scored 1.0."""
        return [(int(d), 1.0) for d in np.flatnonzero(mask)[:k]]
