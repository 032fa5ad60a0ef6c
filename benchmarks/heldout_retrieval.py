"""Retrieval alone on held-out-book questions, with and without the headword rule (`relevance.by_headword`: a
question naming a formula or herb without quoting anything gets that entry's passages first): how often the gold
passage is among the k shown and the cited passage is in the right book, per question type, and the top passages of
a few plain user questions. No model is run.

    python benchmarks/heldout_retrieval.py --run runs/demo --n 150     # the demo's eval questions over its index
    python benchmarks/heldout_retrieval.py --smoke                     # smoke corpus, 20 questions (CI)

On a fresh clone (no runs/demo) the questions come from the smoke corpus's held-out book.
Ends with `RESULT heldout_retrieval_gold <with headwords %> percent baseline=<without %> ratio=<with/without>`.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path
from typing import Any

from _inputs import heldout_questions

USER_QUESTIONS = ("桂枝汤由哪些药物组成？", "黄连的性味如何？", "人参有什么功效？", "麻黄汤主治什么？", "小柴胡汤由哪些药组成？")
"""Plain questions a reader asks, naming a formula or herb without marks or quotes."""


def _score(index: Any, items: list[dict[str, Any]], k: int) -> dict[str, collections.Counter[str]]:
    """Per question type (and "all"): n, gold passage retrieved, cited passage in the gold book."""
    from qihuang.rag import ground

    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for it in items:
        g = ground(index, it["question"], k)
        gold = it["passage_id"] in {h.passage.id for h in g.hits}
        book = g.cited is not None and g.cited.book == it["book"]
        for key in ("all", it["task_type"]):
            out[key].update(n=1, gold=int(gold), book=int(book))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    from qihuang import rag
    from qihuang.retrieval import PassageIndex

    items, spec = heldout_questions(Path("/nonexistent") if args.smoke else args.run, 20 if args.smoke else args.n,
                                    Path(tempfile.mkdtemp()))
    index = PassageIndex.open(spec)
    scores = {}
    for flag in (False, True):
        rag.HEADWORDS = flag
        scores[flag] = _score(index, items, args.k)
        print(f"headwords {'on ' if flag else 'off'}: " + "; ".join(
            f"{q} → {' | '.join(h.passage.title for h in rag.retrieve(index, q, args.k))}" for q in USER_QUESTIONS))
    print("| type | n | gold passage retrieved (off → on) | cited passage in the right book (off → on) |")
    print("|---|---|---|---|")
    for key in sorted(scores[True], key=lambda t: (t != "all", t)):
        a, b = scores[False][key], scores[True][key]
        print(f"| {key} | {a['n']} | {a['gold']} → {b['gold']} | {a['book']} → {b['book']} |")
    off, on = (100 * scores[f]["all"]["gold"] / max(1, scores[f]["all"]["n"]) for f in (False, True))
    print(f"RESULT heldout_retrieval_gold {on:.2f} percent baseline={off:.2f} ratio={on / max(off, 1e-9):.3f}")


if __name__ == "__main__":
    main()
