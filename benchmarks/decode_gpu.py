"""GPU batch-1 decode: the engine's static-KV-cache + CUDA-graph step vs Hugging Face `generate` (the anchor of
../shared/bench/anchor_hf.py: 13B Ziya shape, bf16, random weights, 64-token prompt, 128 new tokens, greedy).

    python benchmarks/decode_gpu.py            # on a CUDA machine
    python benchmarks/decode_gpu.py --dry      # tiny shape on the CPU, checks the script
    python benchmarks/decode_gpu.py --smoke    # --dry on one shape, 16 new tokens: seconds (CI)
Ends with: RESULT decode_gpu <ms>/token baseline=<ms>/token ratio=<x>
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qihuang.serve.fastpath import StaticDecoder  # noqa: E402

ZIYA13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
               num_key_value_heads=40, vocab_size=39424, max_position_embeddings=2048)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=500, max_position_embeddings=512)


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def build(shape: dict, dev: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, attn_implementation="sdpa")
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def hf_generate(model: torch.nn.Module, ids: torch.Tensor, new: int, dev: str) -> tuple[list[int], float]:
    with torch.no_grad():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        sync(dev)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        sync(dev)
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0


def engine_decode(model: torch.nn.Module, ids: list[int], new: int, dev: str, max_len: int,
                  graph: bool) -> tuple[list[int], float, float]:
    """(tokens, seconds for `new` tokens incl. prefill, seconds of the one-time graph capture + warm-up)."""
    dec = StaticDecoder(model, max_len, graph=graph)
    t0 = time.perf_counter()
    nxt = int(torch.argmax(dec.prefill(ids)))
    nxt = int(torch.argmax(dec.step(nxt)))  # first step captures the graph (one-time cost, like a server start)
    sync(dev)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    toks = [int(torch.argmax(dec.prefill(ids)))]
    while len(toks) < new:
        toks.append(int(torch.argmax(dec.step(toks[-1]))))
    sync(dev)
    return toks, time.perf_counter() - t0, setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--shapes", default="135M,13B")
    ap.add_argument("--smoke", action="store_true", help="--dry on one shape, 16 new tokens (seconds, CI)")
    args = ap.parse_args()
    if args.smoke:
        args.dry, args.new_tokens, args.shapes = True, 16, "135M"
    if not args.dry and not torch.cuda.is_available():
        sys.exit("decode_gpu.py needs a CUDA device and found none; --dry or --smoke runs a tiny shape on the CPU")
    dev = "cpu" if args.dry else "cuda"
    dtype = torch.float32 if args.dry else torch.bfloat16
    shapes = {"135M": SMOLLM2_135M, "13B": ZIYA13B}
    out_dir = Path(os.environ.get("OUT", "."))
    results = {"torch": torch.__version__, "device": "cpu" if args.dry else torch.cuda.get_device_name(0)}
    import transformers

    results["transformers"] = transformers.__version__
    print(results, flush=True)
    for name in args.shapes.split(","):
        shape = TINY if args.dry else shapes[name]
        model = build(shape, dev, dtype)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, shape["vocab_size"], (1, 64), generator=g).to(dev)
        base, t_base = hf_generate(model, ids, args.new_tokens, dev)
        row = {"shape": name, "new_tokens": args.new_tokens, "hf_ms_per_token": t_base / args.new_tokens * 1e3}
        for label, graph in (("static", False), ("static_graph", not args.dry)):
            try:
                toks, t, setup = engine_decode(model, ids[0].tolist(), args.new_tokens, dev, 256, graph)
            except Exception as exc:  # report, keep the other figures
                row[f"{label}_error"] = repr(exc)[:400]
                continue
            match = next((i for i, (a, b) in enumerate(zip(toks, base)) if a != b), len(toks))
            row[f"{label}_ms_per_token"] = t / args.new_tokens * 1e3
            row[f"{label}_setup_s"] = setup
            row[f"{label}_same_prefix"] = match
        wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        row["weight_read_floor_ms"] = wbytes / 4.3e12 * 1e3
        print(json.dumps(row), flush=True)
        results[name] = row
        del model
        if dev == "cuda":
            torch.cuda.empty_cache()
    (out_dir / "decode_gpu.json").write_text(json.dumps(results, indent=1))
    last = results[args.shapes.split(",")[-1]]
    best = last.get("static_graph_ms_per_token", last.get("static_ms_per_token", float("nan")))
    print(f"RESULT decode_gpu {best:.2f} ms/token baseline={last['hf_ms_per_token']:.2f} ms/token "
          f"ratio={last['hf_ms_per_token'] / best:.2f}")


if __name__ == "__main__":
    main()
