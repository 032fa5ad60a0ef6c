"""Benchmark: the whole classics directory (669 books, ~144 MB GBK) → passages + card, streaming, on `--workers`
processes; target ≤ 180 s wall on 2 cores and ≤ 2 GB peak RSS.

Each build runs in its own subprocess so its peak RSS (parent + pool workers) is measured alone. Baseline (same
run): the same pipeline in one process (`workers=1`), on every `--baseline-every`-th book (by file order) to keep
the benchmark short; both are compared as input megabytes per second.

Run:  python benchmarks/corpus_build.py [--source DIR] [--workers 2] [--baseline-every 4] [--keep-card DIR]
      python benchmarks/corpus_build.py --smoke     (the 8 median-size books of the source, baseline every 2nd)
Ends with one line:  RESULT corpus_build <MB/s> MB/s baseline=<MB/s> ratio=<ours/baseline>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from qihuang.corpus import CorpusConfig, build_corpus
from qihuang.runs import StageDir
src, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
held = json.loads(sys.argv[4])
cfg = CorpusConfig(source=src, workers=workers, heldout_books=held)
t0, c0 = time.time(), time.process_time()
summary = build_corpus(cfg, StageDir(out))
wall = time.time() - t0
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "cpu_parent": time.process_time() - c0, "cpu_children": kids.ru_utime + kids.ru_stime,
                  "rss_parent_mb": me.ru_maxrss / 1024, "rss_child_max_mb": kids.ru_maxrss / 1024,
                  "summary": summary}))
"""


def run_build(source: Path, workers: int, heldout: list[str], keep: Path | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="qihuang-bench-"))
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.run([sys.executable, "-c", CHILD, str(source), str(out / "corpus"), str(workers),
                               json.dumps(heldout, ensure_ascii=False)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"build failed:\n{proc.stderr[-4000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        card = json.loads((out / "corpus" / "card.json").read_text(encoding="utf-8"))
        res["card"] = {k: card[k] for k in ("books_seen", "books_ingested", "books_rejected", "train_passages",
                                            "heldout_passages", "duplicates_removed", "exact_duplicates",
                                            "near_duplicates", "rejects_by_reason", "replacement_chars",
                                            "body_leaks", "files_rejected", "cleaned_chars")}
        res["card"]["top_overlap"] = card["cross_book_overlap"][:5]
        res["card"]["top_text_overlap"] = card.get("text_overlap", [])[:8]
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("card.json", "card.md", "card.png"):
                shutil.copy2(out / "corpus" / name, keep / name)
        return res
    finally:
        shutil.rmtree(out, ignore_errors=True)


def copy_books(files: list[Path], dest: Path) -> Path:
    """`dest` holding copies of `files` (a build refuses links that point outside its source folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in files:
        shutil.copy2(p, dest / p.name)
    return dest


def smoke_books(files: list[Path], n: int = 8) -> list[Path]:
    """The `n` median-size files of `files`, in file order (--smoke: a few seconds per build)."""
    by_size = sorted(files, key=lambda p: (p.stat().st_size, p.name))
    mid = max(0, len(by_size) // 2 - n // 2)
    return sorted(by_size[mid:mid + n])


def main() -> None:
    from qihuang.corpus.settings import DEFAULT_HELDOUT, default_source

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-every", type=int, default=4, help="baseline on every N-th book (0 = skip)")
    ap.add_argument("--keep-card", type=Path, default=None, help="copy the full run's card.{json,md,png} here")
    ap.add_argument("--smoke", action="store_true", help="8 median-size books, baseline every 2nd (seconds, CI)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qihuang-bench-smoke-") as tmp:
        source = args.source or default_source()
        files = sorted(p for p in source.iterdir() if p.is_file())
        if args.smoke:
            source, args.baseline_every = copy_books(smoke_books(files), Path(tmp) / "books"), 2
            files = sorted(source.iterdir())
        run(args, source, files, list(DEFAULT_HELDOUT))


def run(args: argparse.Namespace, source: Path, files: list[Path], heldout: list[str]) -> None:
    """Our build on `source`, then the one-process baseline on every `args.baseline_every`-th of `files`."""
    size_mb = sum(p.stat().st_size for p in files) / 1e6

    ours = run_build(source, args.workers, heldout, args.keep_card)
    ours_rate = size_mb / ours["wall"]
    c = ours["card"]
    print(f"ours: {len(files)} files, {size_mb:.1f} MB in {ours['wall']:.1f} s wall on {args.workers} workers "
          f"(cpu parent {ours['cpu_parent']:.1f} s + workers {ours['cpu_children']:.1f} s); peak RSS parent "
          f"{ours['rss_parent_mb']:.0f} MB, largest worker {ours['rss_child_max_mb']:.0f} MB")
    print(f"card: {json.dumps(c, ensure_ascii=False)}")
    ok_time = ours["wall"] <= 180
    ok_mem = ours["rss_parent_mb"] + args.workers * ours["rss_child_max_mb"] <= 2048
    print(f"target ≤180 s: {'met' if ok_time else 'MISSED'}; ≤2 GB (parent + workers): "
          f"{'met' if ok_mem else 'MISSED'}; host load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    base_rate = float("nan")
    if args.baseline_every > 0:
        subset = Path(tempfile.mkdtemp(prefix="qihuang-bench-subset-"))
        try:
            chosen = files[::args.baseline_every]
            copy_books(chosen, subset)
            sub_mb = sum(p.stat().st_size for p in chosen) / 1e6
            base = run_build(subset, 1, [])
            base_rate = sub_mb / base["wall"]
            print(f"baseline (1 process, every {args.baseline_every}th book): {len(chosen)} files, {sub_mb:.1f} MB in "
                  f"{base['wall']:.1f} s wall (cpu {base['cpu_parent']:.1f} s); peak RSS {base['rss_parent_mb']:.0f} MB")
        finally:
            shutil.rmtree(subset, ignore_errors=True)
    ratio = ours_rate / base_rate if base_rate == base_rate and base_rate > 0 else float("nan")
    print(f"RESULT corpus_build {ours_rate:.3f} MB/s baseline={base_rate:.3f} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
