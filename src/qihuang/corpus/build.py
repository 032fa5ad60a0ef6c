"""`build_corpus`: stream every input file through ingest → normalise → passages → filters (in a process pool),
then deduplicate and split in the parent, writing train/heldout/rejects JSONL and the data card atomically."""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from qihuang.config import ConfigError
from qihuang.corpus.card import write_card
from qihuang.corpus.category import Categoriser
from qihuang.corpus.classics import parse_year
from qihuang.corpus.dedup import Deduper, exact_hash, signature
from qihuang.corpus.filters import FilterConfig, Probe, check
from qihuang.corpus.ingest import (
    SUFFIXES, book_key, ingest_file, iter_header_lines, printable_name, survey, title_from_name, valid_name,
)
from qihuang.corpus.normalise import normalise_book
from qihuang.corpus.overlap import text_fingerprints
from qihuang.corpus.passages import book_passages, layout
from qihuang.corpus.records import RejectedFile
from qihuang.corpus.settings import CorpusConfig, resolve_source
from qihuang.corpus.split import Candidate, check_heldout, is_heldout, processing_order, select
from qihuang.corpus.tally import Tally, summarise
from qihuang.progress import bar
from qihuang.runs import MetricsLog, StageDir, atomic_open, atomic_path


def _candidate(path: Path, name: str, categorise: Categoriser) -> Candidate:
    """Title, year and category from the first header lines (cheap: no full parse)."""
    title, year = title_from_name(path), None
    for line in iter_header_lines(path):
        line = line.strip()
        if line.startswith("书名：") and line[3:].strip():
            title = line[3:].strip()
        elif line.startswith("年份："):
            year = parse_year(line[3:])
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return Candidate(path=path, name=name, title=title, category=categorise(title, name), year=year, size=size)


@functools.lru_cache(maxsize=4)
def _categoriser(rules: str | None, overrides: tuple[str, ...]) -> Categoriser:
    return Categoriser(Path(rules) if rules else None, list(overrides))


def process_book(job: tuple[Path, str, str, str, bool, dict[str, Any], str | None]) -> dict[str, Any]:
    """Worker: one file -> {'ok', 'book' meta, 'stats', 'passages', 'rejects', 'fingerprints'}; passages come as
    (JSON line, id, exact hash, MinHash signature, length, preview, markup leaks) so the parent only decides. A
    library-only book (read for library.jsonl alone) gets the filter check but only its JSON lines, as 1-tuples:
    no hash, signature, leak counts, reject rows or text fingerprints (the parent uses none of them)."""
    path, name, title, category, held, opts, books_dir = job
    lib_only = bool(opts.get("library_only"))
    t0 = time.time()
    try:
        book = ingest_file(path, name)
    except RejectedFile as exc:
        return {"ok": False, "file": name, "reason": exc.reason, "message": str(exc), "library_only": lib_only}
    except Exception as exc:  # noqa: BLE001 - a bad file must not stop the run; it is reported with its path
        return {"ok": False, "file": name, "reason": "parse_error", "message": f"{name}: {type(exc).__name__}: {exc}",
                "library_only": lib_only}
    if not book.category:
        book.category = (category if book.title == title else
                         _categoriser(opts["category_rules"], tuple(opts["category_map"]))(book.title, name))
    normalise_book(book, punctuation=opts["punctuation"], collapse_spaces=opts["collapse_spaces"], t2s=opts["t2s"],
                   repair=opts["repair"])
    laid = layout(book)
    if books_dir is not None:
        target = Path(books_dir) / f"{book_key(name)}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(laid.text)
    fcfg = FilterConfig(min_chars=opts["min_chars"], min_cjk_ratio=opts["min_cjk_ratio"])
    kept: list[tuple[Any, ...]] = []  # (line, id, hash, sig, len, preview, leaks); (line,) if library-only
    rejects: list[tuple[str, str, str]] = []
    for rec in book_passages(book, laid, opts["passage_chars"], opts["max_passage_chars"]):
        if opts["notes"] != "annotate":
            rec = _notes_mode(rec, opts["notes"])
        text = rec["text"]
        probe = Probe(text)
        ok, reason = check(probe, fcfg)
        if lib_only:
            if ok:
                kept.append((json.dumps(rec, ensure_ascii=False),))
            continue
        if not ok:
            rejects.append((json.dumps({"kind": "passage", **rec, "reason": reason}, ensure_ascii=False), reason,
                            f"{rec['id']}: {text[:120]}"))
            continue
        sig = (signature(text, opts["shingle"], opts["minhash_perm"], opts["seed"], cps=probe.cps)
               if opts["dedup"] else None)
        leaks = (text.count("\\x"), text.count("<篇名>"), text.count("<目录>"))
        kept.append((json.dumps(rec, ensure_ascii=False), rec["id"], exact_hash(text), sig, len(text),
                     text[:120], leaks))
    hashes, weights = text_fingerprints(laid.text) if not lib_only else ([], [])
    meta = {"file": name, "title": book.title, "author": book.author, "dynasty": book.dynasty, "year": book.year,
            "category": book.category, "encoding": book.encoding, "kind": book.kind, "heldout": held,
            "bytes": book.size_bytes, "chars": len(laid.text), "sections": len(book.sections),
            "replacements": book.replacements[:50], "seconds": round(time.time() - t0, 3)}
    return {"ok": True, "book": meta, "stats": dict(book.stats), "passages": kept, "rejects": rejects,
            "fingerprints": (hashes, weights), "library_only": lib_only}


def _refused_row(name: str, reason: str, message: str) -> dict[str, Any]:
    """A file-level reject row; the name is made valid UTF-8 first (it goes into JSON and the card)."""
    shown = printable_name(name)
    return {"file": shown, "status": "rejected", "reason": reason, "message": f"{shown}: {message}"}


def _library_only(res: dict[str, Any], lib: Any, counts: Counter[str]) -> None:
    """A book read only for library.jsonl (not selected for training): its passages, no dedup or card rows."""
    if not res["ok"]:
        counts["library_rejected"] += 1
        return
    for line, *_ in res["passages"]:
        lib.write(line + "\n")
        counts["library_passages"] += 1
    counts["library_books"] += 1


def _notes_mode(rec: dict[str, Any], mode: str) -> dict[str, Any]:
    """`inline`: put note text back into the body at its anchor; `drop`: forget notes (spans then refer to the
    annotated layout, so `start/end` are kept but `text` may differ from the cleaned book for inline)."""
    if mode == "drop":
        return {**rec, "notes": []}
    text = rec["text"]
    for n in sorted(rec["notes"], key=lambda n: -int(n["offset"])):
        text = text[:n["offset"]] + n["text"] + text[n["offset"]:]
    return {**rec, "text": text, "notes": []}


def _opts(cfg: CorpusConfig) -> dict[str, Any]:
    keys = ("punctuation", "collapse_spaces", "t2s", "repair", "min_chars", "min_cjk_ratio", "passage_chars",
            "max_passage_chars", "notes", "dedup", "shingle", "minhash_perm", "seed", "category_map")
    return {**{k: getattr(cfg, k) for k in keys},
            "category_rules": str(cfg.category_rules) if cfg.category_rules else None}


def _results(jobs: list[tuple[Any, ...]], workers: int) -> Any:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield process_book(job)
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(process_book, jobs, chunksize=1)


def build_corpus(cfg: CorpusConfig, out: StageDir) -> dict[str, Any]:
    """Write train.jsonl / heldout.jsonl / rejects.jsonl / card.{md,json,png} (and books/) into `out.path`."""
    t0 = time.time()
    source, files, refused = _survey(cfg)
    out.path.mkdir(parents=True, exist_ok=True)
    metrics = out.metrics()
    file_rows, cands = _candidates(source, files, refused, Categoriser(cfg.category_rules, cfg.category_map))
    sel = _select(cands, cfg)
    file_rows += [{"file": c.name, "status": "skipped", "reason": "not_selected",
                   "message": f"{c.name}: not among the max_books={cfg.max_books} selected", "title": c.title,
                   "category": c.category} for c in sel.others]
    dedup = Deduper(cfg.near_dup_threshold, cfg.minhash_perm, cfg.seed) if cfg.dedup else None
    tally = Tally()
    with contextlib.ExitStack() as stack:
        outs = _open_outputs(stack, out.path, cfg)
        for row in file_rows:
            if row["status"] != "skipped":
                outs.rej.write(json.dumps({"kind": "file", **row}, ensure_ascii=False) + "\n")
        jobs = _jobs(sel, cfg, outs)
        pbar = stack.enter_context(bar(len(jobs), "corpus", "book"))
        for res in _results(jobs, cfg.workers):
            pbar.update(1)
            if res["library_only"]:
                _library_only(res, outs.lib, tally.counts)
            elif not res["ok"]:
                file_rows.append(_file_rejected(res, outs.rej, metrics))
            else:
                row = _ingest(res, outs, tally, dedup)
                file_rows.append(row)
                metrics.log(event="book", file=row["file"], passages=row["passages"], seconds=row["seconds"])
    summary = summarise(cfg, source, file_rows, tally, sel.missing_heldout, len(sel.others), dedup, time.time() - t0)
    return _finish(summary, file_rows, out, metrics)


def _survey(cfg: CorpusConfig) -> tuple[Path, list[Path], list[tuple[Path, str, str]]]:
    """The source folder (or file), its input files and the files refused on sight; ConfigError if none."""
    source = resolve_source(cfg)
    files, refused = survey(source)
    if not files:
        raise ConfigError(f"{source}: no input files found (expected {', '.join(SUFFIXES)}); "
                          "pass --source DIR or download the books with `qihuang corpus fetch`")
    return source, files, refused


def _candidates(source: Path, files: list[Path], refused: list[tuple[Path, str, str]],
                categorise: Categoriser) -> tuple[list[dict[str, Any]], list[Candidate]]:
    """Reject rows of the refused files and those with a bad name or type (or a clashing book name); the rest
    become candidates (title, year, category from their headers)."""
    base = source if source.is_dir() else source.parent
    file_rows = [_refused_row(str(p.relative_to(base)), reason, message) for p, reason, message in refused]
    cands: list[Candidate] = []
    keys: dict[str, str] = {}
    for p in files:
        name = str(p.relative_to(base))
        if not valid_name(name):
            file_rows.append(_refused_row(name, "invalid_file_name", "file name is not valid UTF-8; rename it"))
            continue
        if p.suffix.lower() not in SUFFIXES:
            file_rows.append({"file": name, "status": "rejected", "reason": "unsupported_type",
                              "message": f"{name}: unsupported file type {p.suffix or '(none)'!r}"})
            continue
        if book_key(name) in keys:  # x.txt beside x.md: both would be books/x.txt
            file_rows.append(_refused_row(name, "name_clash", f"same book name as {keys[book_key(name)]}"))
            continue
        keys[book_key(name)] = name
        cands.append(_candidate(p, name, categorise))
    return file_rows, cands


@dataclass
class _Selection:
    """The books to build from, in processing order; the candidates left out; held-out names matching no file."""

    chosen: list[Candidate]
    others: list[Candidate]
    missing_heldout: list[str]


def _select(cands: list[Candidate], cfg: CorpusConfig) -> _Selection:
    """Held-out books plus up to max_books others, canonical copies first (see `qihuang.corpus.split`)."""
    missing_heldout = check_heldout(cands, cfg.heldout_books, strict=False)
    chosen = processing_order(select(cands, cfg.heldout_books, cfg.max_books), cfg.heldout_books)
    chosen_ids = {id(c) for c in chosen}
    return _Selection(chosen, [c for c in cands if id(c) not in chosen_ids], missing_heldout)


@dataclass
class _Outputs:
    """The output files of one build, open for writing (each replaces its target only when the build completes)."""

    train: IO[Any]
    held: IO[Any]
    rej: IO[Any]
    lib: IO[Any] | None
    books_dir: Path | None


def _open_outputs(stack: contextlib.ExitStack, path: Path, cfg: CorpusConfig) -> _Outputs:
    """Open train/heldout/rejects (and library) JSONL and the books/ folder atomically inside `stack`."""
    train = stack.enter_context(atomic_open(path / "train.jsonl"))
    held = stack.enter_context(atomic_open(path / "heldout.jsonl"))
    rej = stack.enter_context(atomic_open(path / "rejects.jsonl"))
    lib = stack.enter_context(atomic_open(path / "library.jsonl")) if cfg.library else None
    books_dir: Path | None = None
    if cfg.write_books:
        books_dir = stack.enter_context(atomic_path(path / "books"))
        books_dir.mkdir(parents=True, exist_ok=True)
    return _Outputs(train, held, rej, lib, books_dir)


def _jobs(sel: _Selection, cfg: CorpusConfig, outs: _Outputs) -> list[tuple[Any, ...]]:
    """`process_book` jobs: the chosen books, then (with a library) the others, read for library.jsonl only."""
    opts = _opts(cfg)
    jobs: list[tuple[Any, ...]] = [
        (c.path, c.name, c.title, c.category, is_heldout(c, cfg.heldout_books), opts,
         str(outs.books_dir) if outs.books_dir else None) for c in sel.chosen]
    if outs.lib is not None:
        jobs += [(c.path, c.name, c.title, c.category, False, {**opts, "library_only": True}, None)
                 for c in sel.others]
    return jobs


def _file_rejected(res: dict[str, Any], rej: IO[Any], metrics: MetricsLog) -> dict[str, Any]:
    """A chosen file that could not be read: its reject row, written and logged."""
    row = {"file": res["file"], "status": "rejected", "reason": res["reason"], "message": res["message"]}
    rej.write(json.dumps({"kind": "file", **row}, ensure_ascii=False) + "\n")
    metrics.log(event="file_rejected", **row)
    return row


def _ingest(res: dict[str, Any], outs: _Outputs, tally: Tally, dedup: Deduper | None) -> dict[str, Any]:
    """One parsed book: rejected passages to rejects.jsonl, then each passage to the library, and to rejects
    (a duplicate) or its split; the book's card row."""
    meta = res["book"]
    tally.book(res, outs.lib is not None)
    for line, reason, preview in res["rejects"]:
        tally.rejected(reason, preview)
        outs.rej.write(line + "\n")
    bc = _passages(res, outs, tally, dedup)
    tally.book_done(meta)
    return {**meta, "status": "ingested", "passages": bc["passages"], "passage_chars": bc["chars"],
            "duplicates": bc["duplicates"], "rejected_passages": len(res["rejects"])}


def _passages(res: dict[str, Any], outs: _Outputs, tally: Tally, dedup: Deduper | None) -> Counter[str]:
    """Write a book's accepted passages: to the library, then to rejects (duplicates) or the book's split."""
    meta = res["book"]
    sink = outs.held if meta["heldout"] else outs.train
    bc: Counter[str] = Counter()
    for line, pid, digest, sig, n, preview, leak in res["passages"]:
        if outs.lib is not None:
            outs.lib.write(line + "\n")
            tally.counts["library_passages"] += 1
        dup = dedup.check(pid, meta["file"], digest, sig) if dedup else None
        if dup is not None:
            tally.duplicate(meta, n, dup, f"{pid} (twin {dup['twin']}): {preview}")
            extra = json.dumps({"kind": "passage", **dup}, ensure_ascii=False)
            outs.rej.write(line[:-1] + ", " + extra[1:] + "\n")
            bc["duplicates"] += 1
            continue
        tally.kept(meta, n, leak)
        sink.write(line + "\n")
        bc["passages"] += 1
        bc["chars"] += n
    return bc


def _finish(summary: dict[str, Any], file_rows: list[dict[str, Any]], out: StageDir,
            metrics: MetricsLog) -> dict[str, Any]:
    """Write the card, log the totals; ConfigError when no book could be used; the stage summary."""
    write_card(out.path, summary, file_rows)
    metrics.log(event="done", **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    metrics.close()
    if not summary["books_ingested"]:
        raise ConfigError(f"{summary['source']}: none of the {len(file_rows)} input files could be used; "
                          f"see {out.path / 'card.md'} for the reasons")
    return {k: summary[k] for k in ("books_ingested", "books_rejected", "books_skipped", "train_passages",
                                    "heldout_passages", "train_chars", "heldout_chars", "duplicates_removed",
                                    "passages_rejected", "replacement_chars", "heldout_books")
            if k in summary} | {k: summary[k] for k in ("library_passages", "library_books") if k in summary}
