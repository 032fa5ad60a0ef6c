"""Held-out-book QA: the offline question generators run over passages of books never trained on, sampled into a
seeded set balanced by question type (the QA the eval stage scores the served system on)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qihuang.instruct.offline import GENERATORS, generate_offline
from qihuang.instruct.records import Passage
from qihuang.instruct.textutil import Lexicon
from qihuang.runs import read_jsonl, sha256_file, write_json, write_jsonl

PASSAGES_PER_QUESTION = 20
"""At most n * this many passages (spread evenly over the file) are put through the generators."""
CANDIDATES_PER_PASSAGE = 8
"""Pairs kept per passage before sampling (the generators' own diversity pick)."""
ASKS_FOR_SOURCE = frozenset({"出处", "篇名归属"})
"""Question types that ask which book a text is from, so name none by design."""


def names_its_book(question: str, book: str, task_type: str) -> bool:
    """Whether a held-out question can be scored against its one book's reference: it names the book, or asks for
    the source. A question that does not (「请说明杏仁的性味。」) has a right answer in every book of the library that
    speaks of it (本草便读: 苦辛…温; 本草思辨录: 苦温), so a reference from one book scores the others as wrong."""
    return task_type in ASKS_FOR_SOURCE or not book or f"《{book}》" in question


def read_passages(path: Path) -> list[Passage]:
    """Passages of a held-out file; only `text` is required (id, book, section default to the line / empty)."""
    out: list[Passage] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            if not isinstance(r, dict) or not isinstance(r.get("text"), str):
                continue
            out.append(Passage(id=str(r.get("id", f"{path.stem}-{lineno}")), book=str(r.get("book") or ""),
                               category=str(r.get("category") or ""), section=str(r.get("section") or ""),
                               start=int(r.get("start") or 0), end=int(r.get("end") or 0), text=r["text"],
                               dynasty=str(r.get("dynasty") or ""), author=str(r.get("author") or "")))
    return out


def _spread(items: list[Passage], limit: int) -> list[Passage]:
    if limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def _interleave_books(recs: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The records of one type in an order that takes turns over books (each book's records shuffled)."""
    by_book: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_book.setdefault(r["book"], []).append(r)
    books = sorted(by_book)
    rng.shuffle(books)
    for b in books:
        rng.shuffle(by_book[b])
    out: list[dict[str, Any]] = []
    while any(by_book.values()):
        for b in books:
            if by_book[b]:
                out.append(by_book[b].pop())
    return out


def balanced_sample(records: Iterable[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """Up to n records taking turns over task types (types with few records give all they have, the others fill
    the rest), and within a type over books; seeded and independent of input order within a type."""
    rng = random.Random(f"heldout-qa:{seed}")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_type.setdefault(r["task_type"], []).append(r)
    queues = {t: _interleave_books(sorted(v, key=lambda r: (r["passage_id"], r["question"])), rng)
              for t, v in sorted(by_type.items())}
    out: list[dict[str, Any]] = []
    while len(out) < n and any(queues.values()):
        for t in sorted(queues):
            if queues[t] and len(out) < n:
                out.append(queues[t].pop(0))
    return out


def build_heldout_qa(heldout_passages: Path, n: int, seed: int, lexicon: Lexicon | None = None,
                     generators: list[str] | None = None) -> list[dict[str, Any]]:
    """A QA set from the held-out books: every offline generator (attribution, section_book, clauses, formula, herb,
    cloze, lexicon) over the held-out passages, questions that do not name their book left out (`names_its_book`),
    then a sample of n balanced by task type.

    Each record: question, reference (the generator's answer), source (passage text), book, section, passage_id,
    task_type, generator."""
    passages = _spread(read_passages(Path(heldout_passages)), max(1, n) * PASSAGES_PER_QUESTION)
    names = generators if generators is not None else list(GENERATORS)
    lex = lexicon if lexicon is not None else Lexicon(frozenset())
    by_id = {p.id: p for p in passages}
    seen: set[str] = set()
    cands: list[dict[str, Any]] = []
    for pair in generate_offline(passages, names, lex, CANDIDATES_PER_PASSAGE, seed):
        p = by_id[pair.passage_id]
        if (not pair.answer.strip() or not pair.question.strip() or pair.question in seen
                or not names_its_book(pair.question, p.book, pair.task_type)):
            continue
        seen.add(pair.question)
        cands.append({"question": pair.question, "reference": pair.answer, "source": p.text, "book": p.book,
                      "section": p.section, "passage_id": p.id, "task_type": pair.task_type,
                      "generator": pair.generator})
    return balanced_sample(cands, n, seed)


def load_lexicon(spec: str) -> Lexicon:
    """The TCM term list named by `spec` (absolute, existing, or under the shared data root); empty if unset or
    not found, so the generators that need it simply give nothing."""
    if not spec:
        return Lexicon(frozenset())
    from qihuang.config import ConfigError
    from qihuang.instruct.build import resolve_data

    try:
        return Lexicon.load(resolve_data(spec))
    except ConfigError:
        return Lexicon(frozenset())


def write_qa(path: Path, records: list[dict[str, Any]]) -> str:
    """Write records as JSONL; returns the file's sha256."""
    write_jsonl(path, records)
    return sha256_file(path)


BUILD_VERSION = 2
"""Bumped when the held-out-book QA builder changes, so a cached set is rebuilt."""


def _lexicon_key(spec: str) -> str | None:
    if not spec:
        return None
    from qihuang.config import ConfigError
    from qihuang.instruct.build import resolve_data

    try:
        return sha256_file(resolve_data(spec))
    except (ConfigError, OSError):
        return None


def cached_heldout_qa(heldout: Path, cfg: Any, qa_path: Path, key_path: Path) -> tuple[list[dict[str, Any]], str,
                                                                                       bool]:
    """The held-out-book QA set of `cfg` (heldout_qa_n, seed, heldout_qa_generators, lexicon) in `qa_path`:
    read back when `key_path` records the same held-out file, settings and lexicon and the file is unchanged,
    else built (`build_heldout_qa`) and written. Returns (records, sha256 of the file, whether it was reused)."""
    key = hashlib.sha256(json.dumps({
        "heldout": sha256_file(heldout), "n": cfg.heldout_qa_n, "seed": cfg.seed,
        "generators": list(cfg.heldout_qa_generators), "lexicon": [cfg.lexicon, _lexicon_key(cfg.lexicon)],
        "v": BUILD_VERSION}, sort_keys=True).encode()).hexdigest()
    if key_path.exists() and qa_path.exists():
        saved = json.loads(key_path.read_text(encoding="utf-8"))
        if saved.get("key") == key and saved.get("sha256") == sha256_file(qa_path):
            return list(read_jsonl(qa_path)), saved["sha256"], True
    items = build_heldout_qa(heldout, cfg.heldout_qa_n, cfg.seed, load_lexicon(cfg.lexicon),
                             cfg.heldout_qa_generators)
    if not items:
        return [], "", False
    digest = write_qa(qa_path, items)
    write_json(key_path, {"key": key, "sha256": digest})
    return items, digest, False
