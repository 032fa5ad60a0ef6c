"""Benchmark: whole-library retrieval index (build seconds, peak RSS, size, open + first query) and quote accuracy
(top-1/top-3 right book and right passage) of char vs jieba segmentation; target ≤ 180 s and ≤ 3 GB peak RSS.

Each build runs in its own subprocess (fresh cache) so its peak RSS is its own. Quotes: `--quotes` sentences of
10-40 characters from seeded random passages, queried verbatim. jieba is measured on every `--jieba-every`-th
passage (the same subset is also indexed with char for a like-for-like accuracy comparison).

Run:  python benchmarks/retrieval_index.py [--passages FILE] [--quotes 300] [--jieba-every 10]
      python benchmarks/retrieval_index.py --smoke          (always the same 4 books of ../shared/data, seconds)
The default --passages is runs/demo/corpus/library.jsonl, which a fresh clone does not have: make it first with
`qihuang corpus build --out runs/demo/corpus` (or the whole demo, `qihuang run recipes/demo.yaml`).
Temporary indexes live in a temporary folder that is removed at the end.
Ends with one line (ratio: jieba build seconds / char build seconds on the same passages, both measured in this
run; the first number is the char build of the whole file):
      RESULT retrieval_index_build <seconds> s baseline=<jieba s> ratio=<jieba s / char s> (same <n> passages)
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
from _inputs import smoke_corpus  # noqa: E402

DEFAULT_PASSAGES = ROOT / "runs" / "demo" / "corpus" / "library.jsonl"

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=Path, default=None,
                    help=f"passages JSONL [default: {DEFAULT_PASSAGES.relative_to(ROOT)}]")
    ap.add_argument("--quotes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jieba-every", type=int, default=10, help="jieba on every N-th passage (1 = whole library)")
    ap.add_argument("--smoke", action="store_true", help="the same 4 shared books every time, seconds (CI)")
    args = ap.parse_args()
    if args.smoke and args.passages is not None:
        ap.error("--smoke always uses the same 4 shared books; drop --passages")
    if not args.smoke:
        if args.passages is None and not DEFAULT_PASSAGES.exists():
            raise SystemExit(f"{DEFAULT_PASSAGES.relative_to(ROOT)} not found: create it with "
                             "`qihuang corpus build --out runs/demo/corpus` (or `qihuang run recipes/demo.yaml`), "
                             "or pass --passages FILE")
        if args.passages is not None and not args.passages.is_file():
            raise SystemExit(f"{args.passages}: passages file not found")
    with tempfile.TemporaryDirectory(prefix="qh-retrieval-bench-") as tmp_name:
        run(args, Path(tmp_name))


def run(args: argparse.Namespace, tmp: Path) -> None:
    """The measurements, with every index and subset under `tmp`."""
    if args.smoke:
        path = smoke_corpus(tmp) / "train.jsonl"  # the same 4 shared books every time
        args.quotes, args.jieba_every = min(args.quotes, 60), 1
    else:
        path = args.passages or DEFAULT_PASSAGES
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
    jieba_s = results["jieba_subset"]["build_seconds"]
    char_s = max(results["char_subset"]["build_seconds"], 0.01)  # meta rounds to 0.01 s
    print(f"RESULT retrieval_index_build {full['build_seconds']:.1f} s baseline={jieba_s:.2f} "
          f"ratio={jieba_s / char_s:.2f} (jieba vs char, same {results['char_subset']['passages']} passages)")


if __name__ == "__main__":
    main()
