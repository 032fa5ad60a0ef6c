"""Benchmark: book-scoped retrieval on held-out-book questions. For each question (a run's eval QA set: question,
gold passage id, book), the top-k passages of `PassageIndex.search` with the named book scoping the search (ours)
and without (`scoped=False`, the baseline), same index, same run. Reports gold passage and right book in the top k.

Run:  python benchmarks/book_scope.py [--run runs/demo] [--k 3]
      python benchmarks/book_scope.py --smoke     (the same 4 shared books, 40 questions quoting them; seconds)
The questions are `<run>/eval/heldout_books_qa.jsonl` and the index the run's (its `index` stage, else
`corpus/library.jsonl`), both written by `qihuang run recipes/demo.yaml`. `--smoke` indexes the 4 training books of
`benchmarks/_inputs.py:smoke_corpus` and asks, of passages spread over them, what 4 of their characters mean,
naming the book.
Ends with: RESULT book_scope_gold_at_k <ours %> % baseline=<unscoped %> ratio=<ours / baseline>
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _inputs import smoke_corpus  # noqa: E402


def smoke_items(passages: Path, n: int) -> list[dict[str, Any]]:
    """`n` questions, each naming its passage's book and quoting 4 of its characters (--smoke)."""
    from qihuang.retrieval import iter_passages

    ps = [p for p in iter_passages(passages) if len(p.text) >= 24]
    return [{"question": f"《{p.book}》所言“{p.text[8:12]}”何解？", "passage_id": p.id, "book": p.book}
            for p in ps[:: max(1, len(ps) // n)][:n]]


def run_items(run: Path) -> list[dict[str, Any]]:
    """The eval stage's held-out-book questions of `run`."""
    qa = run / "eval" / "heldout_books_qa.jsonl"
    if not qa.exists():
        sys.exit(f"{qa} not found: it is written by the eval stage of a run (`qihuang run recipes/demo.yaml`); "
                 "or try `--smoke`")
    return [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="the same 4 shared books, 40 questions (seconds, CI)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qh-book-scope-") as tmp:
        if args.smoke:
            passages = smoke_corpus(Path(tmp)) / "train.jsonl"
            items, spec = smoke_items(passages, 40), passages
        else:
            items, spec = run_items(args.run), args.run
        measure(items, spec, args.k)


def measure(items: list[dict[str, Any]], spec: Path, k: int) -> None:
    """Scoped vs unscoped top-k search over the index of `spec`; prints the table and the RESULT line."""
    from qihuang.retrieval import PassageIndex

    index = PassageIndex.open(spec)
    print(f"{len(items)} questions, index of {len(index.passages):,} passages ({index.meta.get('dir')})")
    figures = {}
    for name, scoped in (("unscoped", False), ("scoped", True)):
        t0 = time.perf_counter()
        gold = book = 0
        for it in items:
            hits = [h.passage for h in index.search(it["question"], k, scoped=scoped)]
            gold += any(p.id == it["passage_id"] for p in hits)
            book += any(p.book == it["book"] for p in hits)
        ms = (time.perf_counter() - t0) / len(items) * 1000
        figures[name] = 100 * gold / len(items)
        print(f"{name}: gold passage in top {k} {figures[name]:.1f}%, right book {100 * book / len(items):.1f}%, "
              f"{ms:.1f} ms/question")
    ours, base = figures["scoped"], figures["unscoped"]
    print(f"RESULT book_scope_gold_at_k {ours:.1f} % baseline={base:.1f} ratio={ours / base:.2f}")


if __name__ == "__main__":
    main()
