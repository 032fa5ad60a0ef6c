"""Count-based reference for held-out bits/char: add-½ character unigram and Witten-Bell interpolated bigram trained
on growing samples of the training passages, scored on the first held-out characters (file order).

    python benchmarks/ngram_bpc.py [--train runs/demo/corpus/train.jsonl] [--heldout runs/demo/corpus/heldout.jsonl]
    (without them, a fresh clone: a 12-book corpus is built first, ~20 s)
        [--chars 4000] [--sizes 20000 60000 200000 0]
    python benchmarks/ngram_bpc.py --smoke    (4 shared training books + 1 held-out book, 2 sizes: seconds)

Puts the pretraining bits/char goal in context: what character statistics of N training characters are worth on
the same held-out text (size 0 = all). Prints one line per size: `NGRAM <chars> unigram=<bpc> bigram=<bpc>`, and
ends with `RESULT ngram_bpc <bigram bpc> bpc baseline=<unigram bpc> ratio=<bigram / unigram>` of the last size.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _inputs import corpus_file, smoke_corpus  # noqa: E402

from qihuang.training.bpc import take_chars  # noqa: E402
from qihuang.training.data import read_texts  # noqa: E402


def score(train: list[str], held: list[str], unseen_types: int = 5000) -> tuple[float, float]:
    """(unigram bpc, bigram bpc) of `held` under models counted on `train`; `^` marks a passage start."""
    uni: Counter[str] = Counter()
    bi: Counter[tuple[str, str]] = Counter()
    ctx: Counter[str] = Counter()
    for text in train:
        t = "^" + text
        uni.update(text)
        bi.update(zip(t, t[1:]))
        ctx.update(t[:-1])
    n, vocab = sum(uni.values()), len(uni) + 1
    types = Counter(a for a, _ in bi)

    def p_uni(c: str) -> float:
        return (uni[c] + 0.5) / (n + 0.5 * (vocab + unseen_types))

    def p_bi(a: str, c: str) -> float:
        if not ctx[a]:
            return p_uni(c)
        lam = ctx[a] / (ctx[a] + types[a])
        return lam * bi[a, c] / ctx[a] + (1 - lam) * p_uni(c)

    hu = hb = 0.0
    chars = 0
    for text in held:
        t = "^" + text
        for a, c in zip(t, t[1:]):
            hu -= math.log2(p_uni(c))
            hb -= math.log2(p_bi(a, c))
            chars += 1
    return hu / chars, hb / chars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="runs/demo/corpus/train.jsonl")
    ap.add_argument("--heldout", default="runs/demo/corpus/heldout.jsonl")
    ap.add_argument("--chars", type=int, default=4000, help="held-out characters scored")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000, 200_000, 0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="4 shared books, sizes 20000 and all (seconds, CI)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # a fresh clone: a small corpus is built first
        if args.smoke:
            corpus = smoke_corpus(Path(tmp))
            args.train, args.heldout, args.sizes = corpus / "train.jsonl", corpus / "heldout.jsonl", [20_000, 0]
        train = read_texts(corpus_file(Path(args.train), Path(tmp), "train.jsonl"))
        held = take_chars(read_texts(corpus_file(Path(args.heldout), Path(tmp), "heldout.jsonl")), args.chars)
    shuffled = list(train)
    random.Random(args.seed).shuffle(shuffled)
    print(f"train {sum(map(len, train)):,} chars, held-out {sum(map(len, held)):,} chars")
    for size in args.sizes:
        sample, total = [], 0
        for text in shuffled:
            if size and total >= size:
                break
            sample.append(text)
            total += len(text)
        u, b = score(sample, held)
        print(f"NGRAM {size or total} unigram={u:.3f} bigram={b:.3f}")
    print(f"RESULT ngram_bpc {b:.3f} bpc baseline={u:.3f} ratio={b / u:.3f} (bigram vs unigram, {total:,} "
          "training characters)")


if __name__ == "__main__":
    main()
