"""Plain questions about the formulas and herbs the library has entries for (「小柴胡汤的组成是什么？」, 「黄连有什么功效？」,
no book named, nothing quoted): how often the passage an answer cites (`rag.ground`) is the entry of the name asked,
and how often the passages shown repeat one text — against the rule before session 23, where a run of five
characters shared with a passage counted as quoting it even when it was the name plus a particle (小柴胡汤的), and
a text a book prints twice could fill two of the k places. No model is run.

    python benchmarks/entry_retrieval.py --run runs/demo --n 200    # the demo's whole-library index
    python benchmarks/entry_retrieval.py --smoke                     # smoke corpus (CI)

Ends with `RESULT entry_retrieval <entry cited %> percent baseline=<before %> ratio=<now/before>`.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import tempfile
from pathlib import Path
from typing import Any

FORMULA = re.compile(r"^([\u4e00-\u9fff]{1,8}(?:汤|散|丸|饮|膏|丹))方?$")
"""A section that is a formula's entry (「小柴胡汤方」, 「六味地黄丸」): the formula's name."""
HERB = re.compile(r"^[\u4e00-\u9fff]{2,3}$")
"""A section of a materia medica (category 本草) that is one herb's entry."""
FORMULA_QUESTIONS = ("{}由哪些药物组成？", "{}的组成是什么？", "{}主治什么？")
HERB_QUESTIONS = ("{}有什么功效？", "{}的性味是什么？")


def entry_names(index: Any, min_books: int) -> dict[str, list[str]]:
    """Formula and herb names with an entry (a section of that name) in at least `min_books` books."""
    books: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for p in index.passages:
        last = p.section.rsplit("/", 1)[-1].strip()
        m = FORMULA.match(last)
        if m:
            books[("formula", m.group(1))].add(p.book)
        elif p.category == "本草" and HERB.match(last):
            books[("herb", last)].add(p.book)
    out: dict[str, list[str]] = {"formula": [], "herb": []}
    for (kind, name), bs in sorted(books.items()):
        if len(bs) >= min_books:
            out[kind].append(name)
    return out


def _is_entry(passage: Any, name: str) -> bool:
    return passage is not None and passage.section.rsplit("/", 1)[-1].strip() in (name, name + "方")


def score(index: Any, questions: list[tuple[str, str, str]], k: int) -> collections.Counter[str]:
    """Per kind: n, the cited passage is the name's entry, the k shown repeat a text."""
    from qihuang.rag import ground

    out: collections.Counter[str] = collections.Counter()
    for kind, name, q in questions:
        g = ground(index, q, k)
        texts = [h.passage.text for h in g.hits]
        out.update({f"{kind}:n": 1, f"{kind}:entry": int(_is_entry(g.cited, name)),
                    f"{kind}:repeat": int(len(set(texts)) < len(texts))})
    return out


def _rule_before() -> Any:
    """The session-22 rule, patched in for the baseline: a shared run of QUOTE_CHARS is a quotation, whatever it
    holds; the pool as BM25 returns it."""
    from qihuang import rag, relevance

    def quotes(query: str, head: str | None, hit: Any) -> bool:
        return relevance.shared_run(relevance.cjk(query), hit) >= relevance.QUOTE_CHARS

    def retrieve(index: Any, query: str, k: int) -> list[Any]:
        if index is None or k <= 0 or not query.strip():
            return []
        pool = relevance.quotes_first(query, index.search(query, max(k, relevance.POOL)), max(k, relevance.POOL))
        return relevance.by_headword(query, pool, index, k)

    return [(relevance, "_quotes", quotes), (rag, "retrieve", retrieve)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--n", type=int, default=200, help="names of each kind (sampled, seed 0)")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--min-books", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    from qihuang.retrieval import PassageIndex

    if args.smoke or not (args.run / "corpus").exists():
        from _inputs import smoke_corpus

        spec: Path = smoke_corpus(Path(tempfile.mkdtemp())) / "train.jsonl"
        args.min_books = 1
    else:
        spec = args.run
    index = PassageIndex.open(spec)
    names = entry_names(index, args.min_books)
    rng = random.Random(0)
    questions = []
    for kind, templates in (("formula", FORMULA_QUESTIONS), ("herb", HERB_QUESTIONS)):
        for name in rng.sample(names[kind], min(args.n, len(names[kind]))):
            questions += [(kind, name, t.format(name)) for t in templates]
    print(f"{len(names['formula'])} formulas and {len(names['herb'])} herbs with entries in ≥ {args.min_books} "
          f"books; {len(questions)} questions, k = {args.k}")
    now = score(index, questions, args.k)
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in _rule_before()]
    for mod, attr, fn in _rule_before():
        setattr(mod, attr, fn)
    try:
        before = score(index, questions, args.k)
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)
    print("| kind | questions | entry cited (before → now) | shown passages repeating a text (before → now) |")
    print("|---|---|---|---|")
    for kind in ("formula", "herb"):
        n = now[f"{kind}:n"]
        print(f"| {kind} | {n} | {before[f'{kind}:entry']} → {now[f'{kind}:entry']} | "
              f"{before[f'{kind}:repeat']} → {now[f'{kind}:repeat']} |")
    total = max(1, now["formula:n"] + now["herb:n"])
    a, b = (100 * (c["formula:entry"] + c["herb:entry"]) / total for c in (now, before))
    print(f"RESULT entry_retrieval {a:.2f} percent baseline={b:.2f} ratio={a / max(b, 1e-9):.3f}")


if __name__ == "__main__":
    main()
