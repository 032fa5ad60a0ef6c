"""Continuous-batching decode with the growing KV cache (`qihuang.serve.kvcache`, spare room written in place) vs
transformers' `DynamicCache` (concatenates, copying the whole cache every step): same `BatchDecoder`, same prompts,
same run, each side in its own process so that each peak memory is its own.

The prompts are the eval stage's retrieval row (a run's held-out-book questions grounded over its index), greedy
with the default repetition control and verbatim quotations. Both sides must give the same answers.

    python benchmarks/kv_cache.py --run runs/demo --n 64 --model runs/demo/sft/model
    python benchmarks/kv_cache.py --smoke      # tiny random model, the smoke corpus, 1 thread (CI)
Ends with: RESULT kv_cache <questions/s> questions/s baseline=<questions/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _inputs import heldout_questions, model_or_base


def _side(args: argparse.Namespace) -> dict[str, Any]:
    """Decode every prompt with one cache kind in this process; answers, seconds, peak RSS."""
    import torch

    import qihuang.serve.kvcache as kvcache
    from qihuang.decoding import DecodeParams, generate_batch
    from qihuang.evaluate.conditions import build_prompts
    from qihuang.models import load_model
    from qihuang.rag import PASSAGE_CHARS, PASSAGES_K
    from qihuang.retrieval import PassageIndex
    from qihuang.template import chat_defaults

    torch.set_num_threads(args.threads)
    if args.side == "dynamic":
        from transformers import DynamicCache

        kvcache.growing_cache = lambda config: DynamicCache(config=config)  # type: ignore[assignment]
    items, index_spec = heldout_questions(args.run, args.n, Path(tempfile.mkdtemp()))
    model, tok = load_model(args.model)
    defaults = chat_defaults(Path(args.model)) if Path(args.model).is_dir() else {}
    prompts, grounds, quotes = build_prompts(tok, defaults, [it["question"] for it in items], "rag",
                                             PassageIndex.open(index_spec), PASSAGES_K, PASSAGE_CHARS,
                                             gate=not args.smoke)
    todo = [i for i, g in enumerate(grounds) if g.answer is None]  # declined: nothing generated
    prompts = [prompts[i] for i in todo]
    quotes = [quotes[i] for i in todo] if quotes is not None else None
    t0 = time.perf_counter()
    answers = generate_batch(model.eval(), tok, prompts, args.max_new_tokens, batch_size=args.batch_size,
                             params=DecodeParams(), quotes=quotes)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"answers": answers, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/sft/model")
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--side", choices=["growing", "dynamic"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.model, args.n, args.batch_size, args.max_new_tokens, args.threads = "tiny-llama", 12, 4, 24, 1
        args.run = Path(tempfile.mkdtemp()) / "no-run"  # questions from the smoke corpus' held-out book
    else:
        args.model = model_or_base(args.model)
    if args.side:
        print(json.dumps(_side(args), ensure_ascii=False))
        return
    sides = {}
    for side in ("dynamic", "growing"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        if args.smoke:
            cmd = [sys.executable, __file__, "--smoke", "--side", side]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        sides[side] = json.loads(out.strip().splitlines()[-1])
    ours, theirs = sides["growing"], sides["dynamic"]
    same = sum(a == b for a, b in zip(ours["answers"], theirs["answers"], strict=True))
    n = len(ours["answers"])
    print(f"{n} prompts, {args.batch_size} rows per forward, up to {args.max_new_tokens} new tokens, model "
          f"{args.model}; same answers {same}/{n}")
    for side, r in sides.items():
        print(f"  {side:8s} {r['seconds']:7.1f} s  peak {r['peak_mb']:7.0f} MB")
    if same != n:
        raise SystemExit("the two caches gave different answers")
    q_ours, q_theirs = n / ours["seconds"], n / theirs["seconds"]
    print(f"RESULT kv_cache {q_ours:.3f} questions/s baseline={q_theirs:.3f} ratio={q_ours / q_theirs:.3f}")


if __name__ == "__main__":
    main()
