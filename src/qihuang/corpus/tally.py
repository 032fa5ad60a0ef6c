"""`Tally`: what `build_corpus` counts while it writes passages, and the card's numbers (card.json) made from it."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qihuang.corpus.dedup import Deduper
from qihuang.corpus.overlap import TextOverlap
from qihuang.corpus.settings import CorpusConfig

EXAMPLES_PER_REASON = 3


def _no_leaks() -> Counter[str]:
    return Counter(backslash_x=0, pianming_tag=0, mulu_tag=0)


@dataclass
class Tally:
    """Counters of one build: per split, reject reason, category and dynasty; cross-book overlap; markup leaks."""

    counts: Counter[str] = field(default_factory=Counter)
    parse_stats: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    examples: defaultdict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    overlap: Counter[tuple[str, str]] = field(default_factory=Counter)
    per_cat: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    per_dyn: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    leaks: Counter[str] = field(default_factory=_no_leaks)
    heldout_files: set[str] = field(default_factory=set)
    text_overlap: TextOverlap = field(default_factory=TextOverlap)

    def book(self, res: dict[str, Any], library: bool) -> None:
        """A parsed book arrives: its parse counters, held-out membership and text fingerprints."""
        meta = res["book"]
        self.counts["library_books"] += library
        self.parse_stats.update(res["stats"])
        if meta["heldout"]:
            self.heldout_files.add(meta["file"])
        self.text_overlap.add(meta["file"], *res["fingerprints"])

    def rejected(self, reason: str, example: str) -> None:
        """A passage the filters rejected."""
        self.reasons[reason] += 1
        self._example(reason, example)

    def duplicate(self, meta: dict[str, Any], n: int, dup: dict[str, Any], example: str) -> None:
        """A passage of `n` characters of book `meta` that duplicates an earlier one (`dup`: Deduper.check)."""
        self.reasons[dup["reason"]] += 1
        if dup["twin_book"] != meta["file"]:
            self.overlap[(meta["file"], dup["twin_book"])] += n
        if not meta["heldout"] and dup["twin_book"] in self.heldout_files:
            self.counts["train_dups_of_heldout"] += 1
        self._example(dup["reason"], example)

    def kept(self, meta: dict[str, Any], n: int, leak: tuple[int, int, int]) -> None:
        """A passage of `n` characters written to its split, with its markup-leak counts."""
        self.leaks["backslash_x"] += leak[0]
        self.leaks["pianming_tag"] += leak[1]
        self.leaks["mulu_tag"] += leak[2]
        split = "heldout" if meta["heldout"] else "train"
        self.counts[f"{split}_passages"] += 1
        self.counts[f"{split}_chars"] += n
        for table in self._tables(meta):
            table["passages"] += 1
            table["chars"] += n

    def book_done(self, meta: dict[str, Any]) -> None:
        """Count the book in its category and dynasty."""
        for table in self._tables(meta):
            table["books"] += 1

    def _tables(self, meta: dict[str, Any]) -> tuple[Counter[str], Counter[str]]:
        return self.per_cat[meta["category"]], self.per_dyn[meta["dynasty"] or "?"]

    def _example(self, reason: str, text: str) -> None:
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            self.examples[reason].append({"text": text})


def summarise(cfg: CorpusConfig, source: Path, rows: list[dict[str, Any]], tally: Tally, missing_heldout: list[str],
              skipped: int, dedup: Deduper | None, seconds: float) -> dict[str, Any]:
    """The card's numbers (card.json)."""
    ingested = [r for r in rows if r["status"] == "ingested"]
    chars = {r["file"]: r["passage_chars"] + 0 for r in ingested}
    book_chars = {r["file"]: r["chars"] for r in ingested}
    overlap_rows = [
        {"book": a, "twin_book": b, "chars": n, "share_of_book": round(n / max(1, book_chars.get(a, 1)), 4),
         "share_of_twin": round(n / max(1, book_chars.get(b, 1)), 4)}
        for (a, b), n in tally.overlap.most_common(25)
    ]
    dups = (dedup.stats["exact_duplicate"] + dedup.stats["near_duplicate"]) if dedup else 0
    counts, reasons, parse_stats = tally.counts, tally.reasons, tally.parse_stats
    summary = {
        "source": str(source),
        "books_seen": len(rows),
        "books_ingested": len(ingested),
        "books_rejected": sum(1 for r in rows if r["status"] == "rejected"),
        "books_skipped": skipped,
        "train_passages": counts["train_passages"],
        "heldout_passages": counts["heldout_passages"],
        "train_chars": counts["train_chars"],
        "heldout_chars": counts["heldout_chars"],
        "cleaned_chars": sum(book_chars.values()),
        "passage_chars_kept": sum(chars.values()),
        "duplicates_removed": dups,
        "train_duplicates_of_heldout": counts["train_dups_of_heldout"],
        "exact_duplicates": dedup.stats["exact_duplicate"] if dedup else 0,
        "near_duplicates": dedup.stats["near_duplicate"] if dedup else 0,
        "passages_rejected": sum(reasons.values()),
        "rejects_by_reason": dict(reasons.most_common()),
        "reject_examples": tally.examples,
        "replacement_chars": parse_stats["replacement_chars"],
        "replacements": [{"file": r["file"], "byte_offsets": r["replacements"]} for r in ingested if r["replacements"]],
        "files_rejected": [{k: r[k] for k in ("file", "reason", "message")} for r in rows if r["status"] == "rejected"],
        "per_category": {k: dict(v) for k, v in sorted(tally.per_cat.items())},
        "per_dynasty": {k: dict(v) for k, v in sorted(tally.per_dyn.items(), key=lambda kv: -kv[1]["chars"])},
        "cross_book_overlap": overlap_rows,
        "parse": dict(parse_stats.most_common()),
        "body_leaks": dict(tally.leaks),
        "heldout_books": sorted(r["title"] for r in ingested if r["heldout"]),
        "heldout_missing": missing_heldout,
        "config": {"passage_chars": cfg.passage_chars, "max_books": cfg.max_books, "t2s": cfg.t2s,
                   "repair": cfg.repair,
                   "punctuation": cfg.punctuation, "notes": cfg.notes, "near_dup_threshold": cfg.near_dup_threshold,
                   "dedup": cfg.dedup},
        "seconds": round(seconds, 2),
        "text_overlap": tally.text_overlap.report(),
    }
    if cfg.library:
        summary.update(library_passages=counts["library_passages"], library_books=counts["library_books"],
                       library_books_rejected=counts["library_rejected"])
    return summary
