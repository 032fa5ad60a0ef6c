"""Benchmark: book-scoped retrieval on held-out-book questions. For each question (a run's eval QA set: question,
gold passage id, book), the top-k passages of `PassageIndex.search` with the named book scoping the search (ours)
and without (`scoped=False`, the baseline), same index, same run. Reports gold passage and right book in the top k.

Run:  python benchmarks/book_scope.py [--run runs/demo] [--k 3]
The questions are `<run>/eval/heldout_books_qa.jsonl` and the index the run's (its `index` stage, else
`corpus/library.jsonl`), both written by `qihuang run recipes/demo.yaml`.
Ends with: RESULT book_scope_gold_at_k <ours %> % baseline=<unscoped %> ratio=<ours / baseline>
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--k", type=int, default=3)
    args = ap.parse_args()
    qa = args.run / "eval" / "heldout_books_qa.jsonl"
    if not qa.exists():
        sys.exit(f"{qa} not found: it is written by the eval stage of a run (`qihuang run recipes/demo.yaml`)")
    from qihuang.retrieval import PassageIndex

    items = [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    index = PassageIndex.open(args.run)
    print(f"{len(items)} questions, index of {len(index.passages):,} passages ({index.meta.get('dir')})")
    figures = {}
    for name, scoped in (("unscoped", False), ("scoped", True)):
        t0 = time.perf_counter()
        gold = book = 0
        for it in items:
            hits = [h.passage for h in index.search(it["question"], args.k, scoped=scoped)]
            gold += any(p.id == it["passage_id"] for p in hits)
            book += any(p.book == it["book"] for p in hits)
        ms = (time.perf_counter() - t0) / len(items) * 1000
        figures[name] = 100 * gold / len(items)
        print(f"{name}: gold passage in top {args.k} {figures[name]:.1f}%, right book {100 * book / len(items):.1f}%, "
              f"{ms:.1f} ms/question")
    ours, base = figures["scoped"], figures["unscoped"]
    print(f"RESULT book_scope_gold_at_k {ours:.1f} % baseline={base:.1f} ratio={ours / base:.2f}")


if __name__ == "__main__":
    main()
