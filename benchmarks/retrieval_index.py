"""Benchmark: whole-library retrieval index (build seconds, peak RSS, size, open + first query) and quote accuracy
(top-1/top-3 right book and right passage) of char vs jieba segmentation; target ≤ 180 s and ≤ 3 GB peak RSS.

Each build runs in its own subprocess (fresh cache) so its peak RSS is its own. Quotes: `--quotes` sentences of
10-40 characters from seeded random passages, queried verbatim. jieba is measured on every `--jieba-every`-th
passage (the same subset is also indexed with char for a like-for-like accuracy comparison).

Run:  python benchmarks/retrieval_index.py --passages runs/demo/corpus/library.jsonl [--quotes 300] [--jieba-every 10]
      python benchmarks/retrieval_index.py --smoke          (a few books of ../shared/data, seconds)
Ends with one line:  RESULT retrieval_index_build <seconds> s baseline=<jieba s or 390> ratio=<baseline/ours>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PREVIOUS_JIEBA_SECONDS = 390.0  # bm25s + jieba over the whole library (266,279 passages), measured before

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from qihuang.retrieval import PassageIndex
path, seg, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
idx = PassageIndex.open(path, segmentation=seg, lexicon="auto", rebuild=(mode == "build"))
opened = time.perf_counter() - t0
hits = idx.search("阴阳者，天地之道也", 3)
out = {"seconds": time.perf_counter() - t0, "open_seconds": opened, "passages": len(idx.passages),
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "dir": idx.meta.get("dir"),
       "first_hit": hits[0].passage.title if hits else None}
if mode == "build":
    out["build_seconds"] = idx.meta["build_seconds"]
print("JSON " + json.dumps(out, ensure_ascii=False))
"""


def child(path: Path, seg: str, mode: str, home: Path) -> dict[str, Any]:
    """Build or open (+ one query) in a fresh process; its numbers."""
    env = {**os.environ, "QIHUANG_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), seg, mode], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{seg} {mode} failed:\n{out.stderr[-3000:]}")
    row = json.loads(next(line[5:] for line in out.stdout.splitlines() if line.startswith("JSON ")))
    row["index_mb"] = sum(f.stat().st_size for f in Path(row["dir"]).iterdir()) / 2**20
    return dict(row)


def quotes(path: Path, n: int, seed: int) -> list[tuple[str, str, str]]:
    """(quote, passage id, book) for n seeded random sentences of 10-40 characters."""
    from qihuang.retrieval import SENTENCE_END, iter_passages

    passages = list(iter_passages(path))
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        p = passages[rng.randrange(len(passages))]
        sents = [s.strip() for s in SENTENCE_END.split(p.text) if 10 <= len(s.strip()) <= 40]
        if sents:
            out.append((rng.choice(sents), p.id, p.book))
    return out


def accuracy(path: Path, seg: str, home: Path, qs: list[tuple[str, str, str]]) -> dict[str, float]:
    """Top-1/top-3 right book / right passage over the quotes (index opened from the cache `home`)."""
    os.environ["QIHUANG_HOME"] = str(home)
    from qihuang.retrieval import PassageIndex

    idx = PassageIndex.open(path, segmentation=seg)
    got = {"book@1": 0, "book@3": 0, "passage@1": 0, "passage@3": 0}
    for quote, pid, book in qs:
        hits = idx.search(quote, 3)
        got["book@1"] += bool(hits) and hits[0].passage.book == book
        got["book@3"] += any(h.passage.book == book for h in hits)
        got["passage@1"] += bool(hits) and hits[0].passage.id == pid
        got["passage@3"] += any(h.passage.id == pid for h in hits)
    return {k: round(v / len(qs), 3) for k, v in got.items()}


def subset(path: Path, every: int, dest: Path, limit: int | None = None) -> Path:
    """Every `every`-th line of `path` (at most `limit` lines) into `dest`."""
    with open(path, encoding="utf-8") as src, open(dest, "w", encoding="utf-8") as out:
        kept = 0
        for i, line in enumerate(src):
            if i % every == 0 and line.strip():
                out.write(line)
                kept += 1
                if limit and kept >= limit:
                    break
    return dest


def smoke_passages(tmp: Path) -> Path:
    """A few books of the shared classics → passages (for --smoke without --passages)."""
    from qihuang.corpus import CorpusConfig, build_corpus
    from qihuang.runs import StageDir

    cfg = CorpusConfig(max_books=4, heldout_books=[], library=False, workers=1, write_books=False)
    build_corpus(cfg, StageDir(tmp / "corpus"))
    return tmp / "corpus" / "train.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=Path, default=ROOT / "runs" / "demo" / "corpus" / "library.jsonl")
    ap.add_argument("--quotes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jieba-every", type=int, default=10, help="jieba on every N-th passage (1 = whole library)")
    ap.add_argument("--smoke", action="store_true", help="a small slice, seconds (CI)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qh-retrieval-bench-"))
    path = args.passages
    if args.smoke:
        path = subset(path, 1, tmp / "slice.jsonl", 3000) if path.exists() else smoke_passages(tmp)
        args.quotes, args.jieba_every = min(args.quotes, 60), 1
    results: dict[str, Any] = {"passages_file": str(path)}
    full = child(path, "char", "build", tmp / "home-char")
    full.update({"open": child(path, "char", "open", tmp / "home-char")})
    results["char_full"] = full
    print(f"char, whole file: {json.dumps(full, ensure_ascii=False)}", flush=True)
    qs = quotes(path, args.quotes, args.seed)
    results["char_full"]["accuracy"] = accuracy(path, "char", tmp / "home-char", qs)
    part = subset(path, args.jieba_every, tmp / "subset.jsonl") if args.jieba_every > 1 else path
    sub_qs = quotes(part, args.quotes, args.seed)
    for seg in ("jieba", "char"):
        row = child(part, seg, "build", tmp / f"home-sub-{seg}")
        row["accuracy"] = accuracy(part, seg, tmp / f"home-sub-{seg}", sub_qs)
        results[f"{seg}_subset"] = row
        print(f"{seg}, every {args.jieba_every}th passage: {json.dumps(row, ensure_ascii=False)}", flush=True)
    print(json.dumps(results, ensure_ascii=False, indent=1))
    ours = full["build_seconds"]
    baseline = (results["jieba_subset"]["build_seconds"] if args.jieba_every == 1 and not args.smoke
                else PREVIOUS_JIEBA_SECONDS)
    print(f"RESULT retrieval_index_build {ours:.1f} s baseline={baseline:.0f} ratio={baseline / ours:.2f}")


if __name__ == "__main__":
    main()
