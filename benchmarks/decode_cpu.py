"""CPU decode tokens/s: the serving engine vs plain `model.generate`, same model, same prompts, same run.

Decode tokens/s = tokens after the first / time after the first (prefill excluded on both sides; end-to-end
seconds are printed too). Greedy decoding with the engine's default repetition control on both sides (the same
`qihuang.decoding` logits processor for `generate`); the script checks that both produce the same tokens (the engine's fast path —
KV-cache reuse without per-step generate overhead, plus prompt-lookup drafting verified in one forward pass —
is exact). Prompts are real serving prompts: a question plus the passages retrieval puts in front of it.

    python benchmarks/decode_cpu.py --model smollm2-135m --max-new-tokens 128
    python benchmarks/decode_cpu.py --smoke    # tiny random model, 2 prompts over 4 shared books, seconds (CI)
Ends with: RESULT decode_cpu <tok/s> tokens/s baseline=<tok/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _inputs import corpus_file, smoke_corpus

QUESTIONS = [
    "太阳病，发热汗出，恶风，脉缓者，当用何方？",
    "桂枝汤的组成和煎服法是什么？",
    "《素问》所说的阴阳是什么意思？",
    "人参有什么功效？",
    "伤寒与温病有什么区别？",
    "脉浮而紧说明什么？",
]


def build_prompts(engine: Any, passages: Path | None, n: int, max_new: int) -> list[str]:
    """Rendered prompts: question + retrieved passages (when a corpus is given)."""
    from qihuang.rag import PASSAGE_CHARS, PASSAGES_K, prepare_prompt
    from qihuang.retrieval import PassageIndex

    index = PassageIndex.open(passages) if passages else None
    out = []
    for q in QUESTIONS[:n]:
        prep = prepare_prompt(engine, [{"role": "user", "content": q}], index, PASSAGES_K, PASSAGE_CHARS, max_new)
        out.append(prep.prompt)
    return out


class FirstTokenClock:
    """A `generate` streamer that only notes when the first new token arrives (the 1st put is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_generate(engine: Any, prompt: str, max_new: int) -> tuple[list[int], float, float]:
    """Plain transformers `model.generate` (greedy), the anchor: (tokens, total s, decode s after 1st token)."""
    import torch

    from qihuang.decoding import logits_processor
    from qihuang.serve.engine import SamplingParams

    ids = engine.prompts.encode(prompt)
    inp = torch.tensor([ids])
    decode = SamplingParams().decode  # the engine's default repetition control, so both decode the same tokens
    procs = [logits_processor(len(ids), decode)] if decode.active else []
    clock = FirstTokenClock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new,
                                    do_sample=False, pad_token_id=engine.tokenizer.pad_token_id, streamer=clock,
                                    logits_processor=procs)
    t1 = time.perf_counter()
    new = out[0][len(ids):].tolist()
    cut = next((i for i, t in enumerate(new) if t in engine.eos_ids), len(new))
    return new[:cut], t1 - t0, t1 - (clock.first or t0)


def run_engine(engine: Any, prompt: str, max_new: int) -> tuple[list[int], float, float]:
    """The engine's token stream (what `Engine.generate`/the server use): (tokens, total s, decode s)."""
    from qihuang.serve.engine import SamplingParams

    ids = engine.prompts.encode(prompt)
    t0 = time.perf_counter()
    first = None
    toks = []
    for tok in engine._token_stream(ids, SamplingParams(max_new_tokens=max_new), lambda: False):
        toks.append(tok)
        if first is None:
            first = time.perf_counter()
    t1 = time.perf_counter()
    return toks, t1 - t0, t1 - (first or t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--passages", default=None,
                    help="corpus JSONL for retrieval-augmented prompts (default: a 12-book corpus of the shared "
                         "classics, built first; '' = bare questions)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model, 2 prompts retrieving from 4 shared books, 24 new tokens (seconds, CI)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qh-decode-cpu-") as tmp:
        if args.smoke:
            args.model, args.prompts, args.max_new_tokens = "tiny-llama", 2, 24
            args.passages = str(smoke_corpus(Path(tmp)) / "train.jsonl")
        elif args.passages is None:
            args.passages = str(corpus_file(Path(tmp) / "none", Path(tmp), "train.jsonl"))
        run(args)


def run(args: argparse.Namespace) -> None:
    """Both decoders over the same prompts; prints a row per prompt and the RESULT line."""
    import torch

    from qihuang.serve.engine import Engine

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model, device=args.device)
    passages = Path(args.passages) if args.passages and Path(args.passages).exists() else None
    prompts = build_prompts(engine, passages, args.prompts, args.max_new_tokens)
    print(f"model={args.model} device={args.device} threads={args.threads} prompts={len(prompts)} "
          f"passages={'yes' if passages else 'no'} max_new_tokens={args.max_new_tokens}")
    run_generate(engine, prompts[0], 8)  # warm-up both paths
    run_engine(engine, prompts[0], 8)

    rows: list[dict[str, Any]] = []
    names = ("generate", "engine", "engine_no_lookup")
    totals: dict[str, list[float]] = {k: [0, 0.0, 0.0] for k in names}  # decode tokens, decode s, end-to-end s
    draft = engine.lookup_draft
    for i, prompt in enumerate(prompts):
        order = ["generate", "engine", "engine_no_lookup"] if i % 2 == 0 else ["engine_no_lookup", "engine", "generate"]
        got: dict[str, tuple[list[int], float, float]] = {}
        for name in order:
            engine.lookup_draft = 0 if name == "engine_no_lookup" else draft
            fn = run_generate if name == "generate" else run_engine
            got[name] = fn(engine, prompt, args.max_new_tokens)
        engine.lookup_draft = draft
        same = got["engine"][0] == got["generate"][0] == got["engine_no_lookup"][0]
        row = {"prompt": i, "prompt_tokens": len(engine.prompts.encode(prompt)), "identical": same}
        for name, (toks, total, decode) in got.items():
            totals[name][0] += len(toks) - 1  # tokens after the first (decode steps)
            totals[name][1] += decode
            totals[name][2] += total
            row[name] = round((len(toks) - 1) / decode, 1) if decode > 0 else 0.0
            row[f"{name}_e2e_s"] = round(total, 2)
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False))
    rate = {k: n / t for k, (n, t, _) in totals.items()}
    identical = all(r["identical"] for r in rows)
    per_prompt = [r["engine"] / r["generate"] for r in rows]
    print(f"decode tokens: {totals['engine'][0]:.0f}  identical outputs: {identical}  per-prompt ratio median "
          f"{statistics.median(per_prompt):.2f}  engine without prompt lookup: {rate['engine_no_lookup']:.1f} tok/s  "
          f"end-to-end s (prefill included): generate {totals['generate'][2]:.1f}, engine {totals['engine'][2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "rate": rate, "identical": identical}, indent=1))
    if not identical:
        print("WARNING: engine and generate outputs differ")
    print(f"RESULT decode_cpu {rate['engine']:.1f} tokens/s baseline={rate['generate']:.1f} "
          f"ratio={rate['engine'] / rate['generate']:.2f}")


if __name__ == "__main__":
    main()
