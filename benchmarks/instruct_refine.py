"""Benchmark: `refine` over 504,372 synthesized pairs (HuangDI's scale) on 2 worker processes, vs a naive baseline.

Pairs are synthesized over invented passages (random text from a Zipf-weighted character set; no book text):
grounded answers quoting spans, paraphrases, fabricated answers, exact and near-duplicate questions, English,
refusals and too-short answers. The measured run is the real `qihuang.instruct.refine.refine` (filters,
grounding, difficulty, exact + MinHash-LSH near-dup) with `--workers` processes.

Baseline (same run, measured on a subset and extrapolated, stated in the output): the textbook approach — one
process, dynamic-programming LCS for grounding and pairwise Jaccard between each new pair and every kept pair for
near-duplicates. Its per-pair filter cost is measured on `--baseline-sample` pairs and its pairwise cost per
comparison likewise; the time for N pairs is extrapolated as  t = a·N + b·N²/2  (pairwise compare is quadratic).

Run:  python benchmarks/instruct_refine.py [--pairs 504372] [--workers 2]
      python benchmarks/instruct_refine.py --smoke     (3,000 pairs over 300 passages, baseline on 300: seconds)
Ends with: RESULT instruct_refine <pairs/s> pairs/s baseline=<pairs/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qihuang.instruct.records import Pair  # noqa: E402
from qihuang.instruct.refine import check_pair, normalize, refine  # noqa: E402
from qihuang.instruct.settings import RefineSettings  # noqa: E402
from qihuang.textmetrics import char_ngrams, content_chars, ngram_coverage  # noqa: E402


def lcs_length_dp(a: str, b: str) -> int:
    """The baseline's LCS: the textbook dynamic programme on two rows (3x faster than rouge_chinese's table-based
    one, so the baseline is not made slow on purpose; the test checks the fast LCS against rouge_chinese's)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(cur[j], prev[j + 1]))
        prev = cur
    return prev[-1]


VOCAB = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 3000))
TEMPLATES_Q = ("「{s}」出自哪部医书？", "{s}是什么意思？", "请解释：{s}", "《{b}》中{s}指什么？", "{s}的主治是什么？")
FABRICATED = "该病主要依靠现代实验室检测确诊并配合抗生素与激素治疗一般两周即可痊愈患者应多喝水注意休息"


def synth_passages(n: int, rng: random.Random) -> dict[str, str]:
    weights = [1 / (i + 1) ** 1.1 for i in range(len(VOCAB))]
    out = {}
    for i in range(n):
        chars = rng.choices(VOCAB, weights=weights, k=rng.randint(150, 320))
        for j in range(9, len(chars), rng.randint(8, 14)):
            chars[j] = "。" if rng.random() < 0.4 else "，"
        out[f"b{i % 97}:{i}"] = "".join(chars)
    return out


def synth_pairs(passages: dict[str, str], total: int, rng: random.Random) -> list[Pair]:
    ids = list(passages)
    pairs: list[Pair] = []
    per = total / len(ids)
    for k, pid in enumerate(ids):
        text = passages[pid]
        want = int((k + 1) * per) - int(k * per)
        for _ in range(want):
            a = rng.randrange(0, len(text) - 40)
            span = text[a : a + rng.randint(12, 60)]
            q = rng.choice(TEMPLATES_Q).format(s=span[: rng.randint(6, 14)], b=pid[:3])
            r = rng.random()
            if r < 0.70:
                ans = "原文说：" + span
            elif r < 0.78:
                ans = "".join(rng.sample(span, len(span)))  # shuffled: n-grams break, some LCS survives
            elif r < 0.86:
                ans = "".join(rng.sample(FABRICATED, 30))
            elif r < 0.90 and pairs:
                prev = pairs[-1]
                q, ans = prev.question, prev.answer  # exact duplicate
            elif r < 0.93 and pairs:
                prev = pairs[-1]
                q, ans = prev.question + "呢", prev.answer + "。"  # near duplicate
            elif r < 0.95:
                ans = "This passage describes a treatment."
            elif r < 0.97:
                ans = "抱歉，作为一个AI，我无法回答。"
            else:
                ans = span[:1]
            pairs.append(Pair(question=q, answer=ans, passage_id=pid, book=pid[:3], section="卷一", category="方书",
                              task_type=rng.choice(("出处", "名词概念", "原文释义", "药物主治")), generator="synth"))
    return pairs


def baseline(pairs: list[Pair], contexts: dict[str, str], rp: RefineSettings, sample: int, n_total: int
             ) -> tuple[float, str]:
    """Naive single-process refine on `sample` pairs; extrapolated pairs/s at n_total (see module docstring)."""
    sub = pairs[:sample]
    t0 = time.perf_counter()
    kept_sets: list[set[str]] = []
    no_grounding = dataclasses.replace(rp, grounding_threshold=0.0)  # grounding is in [0, 1]: every pair passes
    for p in sub:
        ctx = contexts[p.passage_id]
        ok, _ = check_pair(p, ctx, no_grounding)
        if ok:  # grounding again with the DP LCS the naive way
            a, c = content_chars(p.answer), content_chars(ctx)
            g = 0.5 * ngram_coverage(p.answer, ctx, 2, cache=False) + 0.5 * lcs_length_dp(a, c) / max(1, len(a))
            ok = g >= rp.grounding_threshold
        if ok:
            kept_sets.append(set(char_ngrams(normalize(p.question + p.answer), 3)))
    t_filter = (time.perf_counter() - t0) / len(sub)
    # pairwise Jaccard: time per comparison, measured on the kept sets
    t0 = time.perf_counter()
    comps = 0
    for i, s in enumerate(kept_sets):
        for t in kept_sets[:i]:
            _ = len(s & t) / max(1, len(s | t))
            comps += 1
    t_cmp = (time.perf_counter() - t0) / max(1, comps)
    keep_rate = len(kept_sets) / len(sub)
    kept_n = keep_rate * n_total
    est = t_filter * n_total + t_cmp * kept_n * kept_n / 2
    note = (f"baseline measured on {len(sub):,} pairs: {t_filter * 1e6:.0f} us/pair filters+DP-LCS, "
            f"{t_cmp * 1e9:.0f} ns/pairwise comparison; extrapolated to {n_total:,} pairs = {est / 3600:.1f} h")
    return n_total / est, note


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=504_372)
    ap.add_argument("--passages", type=int, default=40_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-sample", type=int, default=3000)
    ap.add_argument("--smoke", action="store_true", help="3,000 pairs, baseline on 300 (seconds, CI)")
    args = ap.parse_args()
    if args.smoke:
        args.pairs, args.passages, args.baseline_sample = 3000, 300, 300
    rng = random.Random(0)
    t0 = time.perf_counter()
    passages = synth_passages(args.passages, rng)
    pairs = synth_pairs(passages, args.pairs, rng)
    print(f"synthesized {len(pairs):,} pairs over {len(passages):,} passages in {time.perf_counter() - t0:.1f}s")
    rp = RefineSettings()
    base_rate, note = baseline(pairs, passages, rp, args.baseline_sample, len(pairs))
    print(note)
    r0s, r0c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    kept, rejects = refine(pairs, passages.get, rp, workers=args.workers, chunk=2000)
    dt = time.perf_counter() - t0
    r1s, r1c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_parent = (r1s.ru_utime + r1s.ru_stime) - (r0s.ru_utime + r0s.ru_stime)
    cpu_workers = (r1c.ru_utime + r1c.ru_stime) - (r0c.ru_utime + r0c.ru_stime)
    rate = len(pairs) / dt
    from collections import Counter

    mem_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mem_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"refine: {len(pairs):,} pairs in {dt:.1f}s with {args.workers} workers; kept {len(kept):,}; "
          f"rejects {dict(Counter(r['reason'] for r in rejects).most_common())}")
    print(f"CPU: parent {cpu_parent:.1f}s, workers {cpu_workers:.1f}s in total; on {args.workers} cores to ourselves "
          f"this needs about max(parent, (parent + workers) / {args.workers}) = "
          f"{max(cpu_parent, (cpu_parent + cpu_workers) / args.workers):.0f}s of wall time "
          f"(measured wall {dt:.0f}s on a shared machine; load average {os.getloadavg()[0]:.1f})")
    print(f"peak RSS: parent {mem_self:.0f} MB, largest worker {mem_kids:.0f} MB "
          f"(target: <= 300 s and <= 4096 MB) -> {'OK' if dt <= 300 and mem_self + 2 * mem_kids <= 4096 else 'MISSED'}")
    print(f"RESULT instruct_refine {rate:.0f} pairs/s baseline={base_rate:.1f} ratio={rate / base_rate:.1f}")


if __name__ == "__main__":
    main()
