"""GPU throughput of qihuang's training loop (`qihuang.training.loop.train_loop`) on LLaMA shapes with random
weights: SmolLM2-135M and TinyLlama-1.1B full training (fp32 master weights + bf16 autocast), Ziya-13B LoRA r16.

Run beside ../shared/bench/anchor_hf.py (same shapes, same LoRA config) on the same card. Several variants per
shape (regional torch.compile, chunked/fused cross-entropy, micro-batch, partial gradient checkpointing); every
variant is reported, the best per shape is the figure. Liger kernels are used when `liger-kernel` is installed.
`--dry` runs tiny shapes on the CPU to check the script. `--baseline` also times, per shape, the plain Hugging Face
loop of ../shared/bench/anchor_hf.py (its settings) in the same process, and the RESULT lines then carry
`baseline=` and `ratio=`. Writes JSON to $OUT (or --out).

    python benchmarks/pretrain_gpu.py [--dry] [--only 135M,1.1B,13B] [--baseline]
    python benchmarks/pretrain_gpu.py --smoke    # --dry --only 135M --baseline: seconds on the CPU (CI)
Ends with one line per shape: RESULT pretrain_gpu <shape> <tokens/s> tokens/s [baseline=<plain HF> ratio=<x>] (...)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qihuang.pretrain import PretrainConfig, prepare_for_training  # noqa: E402
from qihuang.training.data import PackedData  # noqa: E402
from qihuang.training.loop import train_loop  # noqa: E402

ZIYA13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
               num_key_value_heads=40, vocab_size=39424, max_position_embeddings=2048)
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=39424, max_position_embeddings=2048)
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=500, max_position_embeddings=2048)

# (shape name, variant name, settings); measured steps follow `warm` un-timed steps (compilation, autotuning)
PLAN: list[tuple[str, str, dict[str, Any]]] = [
    ("135M", "compile mb16", dict(shape=SMOLLM2_135M, lora=False, mb=16, ga=1, compile=True, chunk=0, gc=0.0)),
    ("135M", "compile mb32 chunked-CE", dict(shape=SMOLLM2_135M, lora=False, mb=32, ga=1, compile=True, chunk=16384,
                                             gc=0.0)),
    ("1.1B", "compile mb16 chunked-CE", dict(shape=TINYLLAMA, lora=False, mb=16, ga=1, compile=True, chunk=16384,
                                             gc=0.0)),
    ("1.1B", "compile mb24 chunked-CE", dict(shape=TINYLLAMA, lora=False, mb=24, ga=1, compile=True, chunk=16384,
                                             gc=0.0)),
    ("13B", "LoRA compile no-gc mb2 ga4", dict(shape=ZIYA13B, lora=True, mb=2, ga=4, compile=True, chunk=8192,
                                               gc=0.0)),
    ("13B", "LoRA no-gc mb2 ga4", dict(shape=ZIYA13B, lora=True, mb=2, ga=4, compile=False, chunk=8192, gc=0.0)),
    ("13B", "LoRA gc-half mb4 ga2", dict(shape=ZIYA13B, lora=True, mb=4, ga=2, compile=False, chunk=8192, gc=0.5)),
    ("1.1B", "eager mb8", dict(shape=TINYLLAMA, lora=False, mb=8, ga=1, compile=False, chunk=0, gc=0.0)),
]
STEPS = {"135M": (2, 6), "1.1B": (2, 4), "13B": (1, 3)}  # (warm-up steps, timed steps)
ANCHOR: dict[str, dict[str, Any]] = {
    "135M": dict(shape=SMOLLM2_135M, lora=False, mb=16, gc=False),
    "1.1B": dict(shape=TINYLLAMA, lora=False, mb=8, gc=False),
    "13B": dict(shape=ZIYA13B, lora=True, mb=8, gc=True),
}
"""--baseline: the settings of ../shared/bench/anchor_hf.py's plain loop per shape (LoRA r16 on all seven linear
projections for 13B)."""


class Rows:
    """Collects the loop's metrics rows in memory."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def log(self, **kw: Any) -> None:
        self.rows.append(kw)


def anchor_flops_per_token(cfg: Any, n_params: int, seq: int, lora: bool) -> float:
    """The same FLOP count as ../shared/bench/anchor_hf.py, so MFU figures compare."""
    L, h = cfg.num_hidden_layers, cfg.hidden_size
    attn = 12 * L * h * seq / 2
    return 4 * n_params + attn * 2 / 3 if lora else 6 * n_params + attn


def synthetic_data(vocab: int, seq: int, n_blocks: int) -> PackedData:
    """Random tokens in documents of 3k–9k tokens (throughput does not depend on token values)."""
    rng = np.random.default_rng(0)
    n = n_blocks * seq + 1
    stream = rng.integers(0, vocab, n, dtype=np.int64).astype(np.int32)
    starts = np.zeros(n, dtype=bool)
    pos = 0
    while pos < n:
        starts[pos] = True
        pos += int(rng.integers(3000, 9000))
    return PackedData(stream, starts, seq, seed=0)


def sync(dry: bool) -> None:
    """Wait for the GPU's queued work (nothing to wait for on a dry run)."""
    if not dry:
        torch.cuda.synchronize()


def random_llama(shape: dict[str, Any], dev: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(LLaMA model with seeded random weights on `dev` in `dtype`, its config)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model, cfg


def plain_hf(shape_name: str, dry: bool, seq: int) -> float:
    """Tokens/s of the anchor's plain loop on the shape: HF forward with labels under bf16 autocast (none on the
    CPU, like our dry runs), backward, AdamW (fused on CUDA); peft LoRA and gradient checkpointing as ANCHOR says."""
    kw, dev = ANCHOR[shape_name], "cpu" if dry else "cuda"
    model, cfg = random_llama(TINY if dry else kw["shape"], dev, torch.bfloat16 if kw["lora"] else torch.float32)
    if kw["gc"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if kw["lora"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"]))
        if kw["gc"]:
            model.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=not dry)
    ids = torch.randint(0, cfg.vocab_size, (kw["mb"], seq), device=dev)

    def step() -> None:
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=not dry):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    warm, steps = STEPS[shape_name] if not dry else (1, 2)
    for _ in range(warm):
        step()
    sync(dry)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dry)
    return steps * kw["mb"] * seq / (time.perf_counter() - t0)


def variant_config(kw: dict[str, Any], seq: int, total_steps: int, dry: bool) -> PretrainConfig:
    """A variant's settings: constant LR 1e-4, no spike guard, no checkpoints, plain causal attention over the
    packed block (doc_mask off: SDPA's flash kernel takes no block-diagonal mask); no compile on a dry run unless
    DRY_COMPILE=1."""
    return PretrainConfig(
        mode="lora" if kw["lora"] else "full", lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_embeddings="none",
        grad_checkpoint=kw["gc"], general_ratio=0.0, seq_len=seq, batch_size=kw["mb"], grad_accum=kw["ga"],
        learning_rate=1e-4, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, clip=1.0, max_steps=total_steps,
        schedule_steps=total_steps, fit_schedule=False, spike_factor=0.0, spike_max_in_row=3, rollback_lr_factor=0.5,
        checkpoint_every_steps=0, checkpoint_every_minutes=0.0, keep_checkpoints=1, eval_every=0, log_every=1,
        ce_chunk_tokens=kw["chunk"], compile=kw["compile"] and (not dry or os.environ.get("DRY_COMPILE") == "1"),
        doc_mask=False, peak_tflops=None, tensorboard=False)


def run_variant(shape_name: str, name: str, kw: dict[str, Any], dry: bool, seq: int) -> dict[str, Any]:
    from accelerate import Accelerator

    torch._dynamo.reset()
    dev = "cpu" if dry else "cuda"
    # as the anchors: bf16 frozen base for LoRA
    model, cfg = random_llama(TINY if dry else kw["shape"], dev, torch.bfloat16 if kw["lora"] else torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    warm, steps = STEPS[shape_name] if not dry else (1, 2)
    pcfg = variant_config(kw, seq, warm + steps, dry)
    model = prepare_for_training(pcfg, model, {})
    model.train()
    mb, ga = kw["mb"], kw["ga"]
    data = synthetic_data(cfg.vocab_size, seq, (warm + steps) * mb * ga + 1)
    acc = Accelerator(cpu=dry, mixed_precision="no" if dry else "bf16")
    rows = Rows()
    if not dry:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        train_loop(model, data, pcfg, acc, Path(tmp) / "checkpoints", rows, None)
    timed = [r for r in rows.rows if "tokens_per_s" in r and r["step"] > warm]
    secs = sum(mb * ga * seq / r["tokens_per_s"] for r in timed)
    tps = len(timed) * mb * ga * seq / secs
    out = dict(shape=shape_name, variant=name, micro_batch=mb, grad_accum=ga, seq=seq, lora=kw["lora"],
               compile=kw["compile"], ce_chunk=kw["chunk"], grad_ckpt=kw["gc"], params_b=n_params / 1e9,
               tokens_per_s=tps, model_tflops=tps * anchor_flops_per_token(cfg, n_params, seq, kw["lora"]) / 1e12,
               peak_mem_gb=0 if dry else torch.cuda.max_memory_allocated() / 2**30, wall_s=time.time() - t0,
               losses=[r["loss"] for r in rows.rows if "loss" in r])
    del model, data, acc
    gc.collect()
    if not dry:
        torch.cuda.empty_cache()
    return out


def peak_bf16() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 / ((time.perf_counter() - t) / 10) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="tiny shapes on the CPU (checks the script)")
    ap.add_argument("--only", default="", help="comma-separated shapes (135M,1.1B,13B)")
    ap.add_argument("--out", default=os.environ.get("OUT", tempfile.gettempdir()))
    ap.add_argument("--baseline", action="store_true", help="also time the anchor's plain HF loop per shape")
    ap.add_argument("--smoke", action="store_true", help="--dry --only 135M --baseline (seconds on the CPU, CI)")
    args = ap.parse_args()
    if args.smoke:
        args.dry, args.only, args.baseline = True, "135M", True
    if not args.dry and not torch.cuda.is_available():
        sys.exit("pretrain_gpu.py needs a CUDA device and found none; --dry or --smoke runs tiny shapes on the CPU")
    torch._dynamo.config.cache_size_limit = 64
    res: dict[str, Any] = {"torch": torch.__version__, "gpu": "cpu (dry)" if args.dry else torch.cuda.get_device_name(0)}
    try:
        import liger_kernel  # noqa: F401

        res["liger"] = True
    except ImportError:
        res["liger"] = False
    if not args.dry:
        torch.backends.cuda.matmul.allow_tf32 = True
        res["peak_bf16_tflops"] = peak_bf16()
    print(json.dumps(res), flush=True)
    only = {x for x in args.only.split(",") if x}
    rows = []
    for shape_name, name, kw in PLAN:
        if only and shape_name not in only:
            continue
        try:
            r = run_variant(shape_name, name, kw, args.dry, 64 if args.dry else 2048)
        except Exception as exc:  # OOM or a kernel failure: record it and go on
            traceback.print_exc()
            r = dict(shape=shape_name, variant=name, error=repr(exc)[:300])
            gc.collect()
            if not args.dry:
                torch.cuda.empty_cache()
        if "tokens_per_s" in r and res.get("peak_bf16_tflops"):
            r["mfu"] = r["model_tflops"] / res["peak_bf16_tflops"]
        print(json.dumps(r), flush=True)
        rows.append(r)
        res["rows"] = rows
        Path(args.out, "pretrain_gpu.json").write_text(json.dumps(res, indent=1))
    if args.baseline:
        res["baseline_tokens_per_s"] = baselines(list(dict.fromkeys(r["shape"] for r in rows)), args.dry)
        Path(args.out, "pretrain_gpu.json").write_text(json.dumps(res, indent=1))
    report(rows, res.get("baseline_tokens_per_s", {}))


def baselines(shapes: list[str], dry: bool) -> dict[str, float]:
    """The anchor's plain loop on each shape (a failure, e.g. out of memory, leaves the shape without one)."""
    out: dict[str, float] = {}
    for shape in shapes:
        try:
            out[shape] = plain_hf(shape, dry, 64 if dry else 2048)
        except Exception:  # noqa: BLE001 - report and go on, like the variants
            traceback.print_exc()
        gc.collect()
        if not dry:
            torch.cuda.empty_cache()
        print(json.dumps({"shape": shape, "baseline": "plain HF (anchor_hf)", "tokens_per_s": out.get(shape)}),
              flush=True)
    return out


def report(rows: list[dict[str, Any]], base: dict[str, float]) -> None:
    """The table of every variant and one RESULT line per shape (its best variant; vs `base` where measured)."""
    print("\n| shape | variant | tokens/s | model TFLOP/s | MFU | peak GiB |")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['variant']} | ERROR {r['error'][:80]} |")
            continue
        print(f"| {r['shape']} | {r['variant']} | {r['tokens_per_s']:.0f} | {r['model_tflops']:.0f} | "
              f"{r.get('mfu', 0):.1%} | {r['peak_mem_gb']:.1f} |")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        ok = [r for r in rows if r["shape"] == shape and "tokens_per_s" in r]
        if ok:
            best = max(ok, key=lambda r: r["tokens_per_s"])
            tps, b, name = best["tokens_per_s"], base.get(shape), best["variant"]
            vs = f"baseline={b:.0f} ratio={tps / b:.2f} ({name} vs plain HF)" if b else f"({name})"
            print(f"RESULT pretrain_gpu {shape} {tps:.0f} tokens/s {vs}")


if __name__ == "__main__":
    main()
