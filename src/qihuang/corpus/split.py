"""Book selection and the held-out split: match held-out names to files, pick a category-balanced subset for
quick runs, and order books so the canonical (held-out, then earliest) copy of a duplicated passage wins."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from qihuang.config import ConfigError


@dataclass
class Candidate:
    """An input file before the full parse: its name, guessed title, category and year from the header."""

    path: Path
    name: str
    title: str
    category: str
    year: int | None
    size: int = 0


def is_heldout(c: Candidate, heldout: list[str]) -> bool:
    """A book is held out if its title, file name or file stem equals a held-out entry."""
    keys = {c.title, c.name, Path(c.name).stem, c.path.name}
    return any(h in keys for h in heldout)


def check_heldout(cands: list[Candidate], heldout: list[str], strict: bool) -> list[str]:
    """Held-out entries that match no input file; with `strict` (a full corpus) that is a ConfigError."""
    missing = [h for h in heldout if not any(is_heldout(c, [h]) for c in cands)]
    if missing and strict:
        raise ConfigError(f"heldout_books not found among the input files: {missing}")
    return missing


def select(cands: list[Candidate], heldout: list[str], max_books: int | None) -> list[Candidate]:
    """Held-out books plus, if `max_books` is set, that many others taken round-robin across categories, each
    category offering its books closest to the median file size first (then file order), so a small run mixes
    categories and is not dominated by a few huge compendia."""
    held = [c for c in cands if is_heldout(c, heldout)]
    others = [c for c in cands if not is_heldout(c, heldout)]
    if max_books is None or max_books >= len(others):
        return held + others
    sizes = sorted(max(1, c.size) for c in others)
    median = sizes[len(sizes) // 2]
    by_cat: dict[str, list[Candidate]] = defaultdict(list)
    for c in sorted(others, key=lambda c: (abs(math.log(max(1, c.size) / median)), c.name)):
        by_cat[c.category].append(c)
    queues = [by_cat[k] for k in sorted(by_cat)]
    picked: list[Candidate] = []
    i = 0
    while len(picked) < max_books:
        q = queues[i % len(queues)]
        if q:
            picked.append(q.pop(0))
        i += 1
        if not any(queues):
            break
    order = {id(c): n for n, c in enumerate(cands)}
    return held + sorted(picked, key=lambda c: order[id(c)])


def processing_order(chosen: list[Candidate], heldout: list[str]) -> list[Candidate]:
    """Held-out books first (their passages are canonical), then by year (unknown last), then file name."""
    def key(c: Candidate) -> tuple[int, int, str]:
        return (0 if is_heldout(c, heldout) else 1, c.year if c.year is not None else 10**6, c.name)

    return sorted(chosen, key=key)
