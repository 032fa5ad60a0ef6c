"""Eval answer generation: continuous batching (the server's `BatchDecoder`, what `qihuang.decoding.generate_batch`
uses) vs fixed batches through `model.generate` (its previous path), same model, same prompts, same run.

The prompts are the eval stage's retrieval row: a run's held-out-book questions grounded over the run's index
(`evaluate.conditions.build_prompts`), greedy with the default repetition control and verbatim quotations,
`--batch-size` rows per forward on both sides. Both sides must give the same answers (greedy decoding is exact either way; a mismatch is printed).
Also prints the prefill rate of the longest prompts (what a retrieval row pays before decoding). On a fresh clone
(no runs/demo) the questions come from the smoke corpus's held-out book and the model is smollm2-135m.

    python benchmarks/eval_decode.py --run runs/demo --n 64 --model runs/demo/sft/model
    python benchmarks/eval_decode.py --smoke      # tiny random model, invented passages, 1 thread (CI)
    python benchmarks/eval_decode.py --run runs/demo --n 64 --shared-opening   # baseline: every prompt prefilled
                                                                              # whole (no shared opening)
Ends with: RESULT eval_decode <questions/s> questions/s baseline=<questions/s> ratio=<x>
(with --shared-opening: RESULT eval_shared_opening ..., the baseline continuous batching without it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _inputs import heldout_questions, model_or_base


def _smoke(tmp: Path) -> tuple[list[str], Path]:
    passages = [{"id": f"s-{i}", "book": f"虚构书{i % 3}", "section": f"第{i}篇", "category": "医经", "start": 0,
                 "end": 30, "text": f"第{i}条：脉浮而缓者，风在表也；其{i}方主之。" * (1 + i % 3)} for i in range(12)]
    path = tmp / "passages.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")
    return [f"“其{i}方主之”出自何书？" + "请说明。" * (i % 4) for i in range(10)], path


def _load(spec: str) -> tuple[Any, Any, dict[str, Any]]:
    from qihuang.models import load_model
    from qihuang.template import chat_defaults

    model, tok = load_model(spec)
    return model.eval(), tok, (chat_defaults(Path(spec)) if Path(spec).is_dir() else {})


def _prefill_rate(model: Any, tok: Any, prompts: list[str], batch: int) -> None:
    """Print the prefill tokens/s of one forward over the `batch` longest prompts (left-padded, last logits only)."""
    import torch

    from qihuang.template import encode_text

    ids = sorted((encode_text(tok, p) for p in prompts), key=len)[-batch:]
    if not ids:
        return
    width = max(len(x) for x in ids)
    inp = torch.tensor([[0] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(input_ids=inp, attention_mask=mask, logits_to_keep=1)
        dt = time.perf_counter() - t0
    real = sum(len(x) for x in ids)
    print(f"prefill: {len(ids)} prompts x {width} tokens (median {sorted(map(len, ids))[len(ids) // 2]}) in "
          f"{dt:.1f} s = {real / dt:.0f} prompt tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/sft/model")
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--shared-opening", action="store_true",
                    help="baseline: the same continuous batching with each prompt's shared opening (system prompt, "
                         "passages header) prefilled again instead of run once")
    args = ap.parse_args()
    import torch

    from qihuang.decoding import DecodeParams, _generate_fixed, generate_batch
    from qihuang.evaluate.conditions import build_prompts
    from qihuang.rag import PASSAGE_CHARS, PASSAGES_K
    from qihuang.retrieval import PassageIndex

    torch.set_num_threads(1 if args.smoke else args.threads)  # smoke: CI runs share the cores
    if args.smoke:
        questions, index_spec = _smoke(Path(tempfile.mkdtemp()))
        spec, batch, max_new = "tiny-llama", 4, 24
    else:
        items, index_spec = heldout_questions(args.run, args.n, Path(tempfile.mkdtemp()))
        questions = [it["question"] for it in items]
        spec, batch, max_new = model_or_base(args.model), args.batch_size, args.max_new_tokens
    model, tok, defaults = _load(spec)
    prompts, grounds, quotes = build_prompts(tok, defaults, questions, "rag", PassageIndex.open(index_spec),
                                             PASSAGES_K, PASSAGE_CHARS, gate=not args.smoke)  # invented text: no gate
    todo = [i for i, g in enumerate(grounds) if g.answer is None]  # declined: nothing generated
    prompts, quotes = [prompts[i] for i in todo], [quotes[i] for i in todo] if quotes is not None else None
    params = DecodeParams()
    _prefill_rate(model, tok, prompts, batch)
    t0 = time.perf_counter()
    if args.shared_opening:
        from unittest import mock

        with mock.patch("qihuang.serve.kvcache.common_prefix", lambda encoded: []):
            fixed = generate_batch(model, tok, prompts, max_new, batch_size=batch, params=params, quotes=quotes)
    else:
        fixed = _generate_fixed(model, tok, prompts, max_new, batch, params, None, quotes)
    t_fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = generate_batch(model, tok, prompts, max_new, batch_size=batch, params=params, quotes=quotes)
    t_ours = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(ours, fixed, strict=True))
    for a, b in zip(ours, fixed, strict=True):
        if a != b:
            print(f"differs:\n  continuous: {a[:80]!r}\n  fixed:      {b[:80]!r}")
            break
    chars = sum(len(a) for a in ours)
    base = "whole prompts" if args.shared_opening else "fixed batches"
    print(f"{len(prompts)} prompts, {batch} rows per forward, up to {max_new} new tokens, {chars} answer chars; "
          f"same answers {same}/{len(prompts)}; {base} {t_fixed:.1f} s, continuous {t_ours:.1f} s")
    q_ours, q_fixed = len(prompts) / t_ours, len(prompts) / t_fixed
    name = "eval_shared_opening" if args.shared_opening else "eval_decode"
    print(f"RESULT {name} {q_ours:.3f} questions/s baseline={q_fixed:.3f} ratio={q_ours / q_fixed:.3f}")


if __name__ == "__main__":
    main()
