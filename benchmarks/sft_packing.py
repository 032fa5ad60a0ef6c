"""SFT throughput on CPU with packing vs without: real (non-padding) tokens per second, same data, same run.

    python benchmarks/sft_packing.py [--model smollm2-135m] [--data FILE] [--steps 3] [--max-length 512] [--threads 1]
    python benchmarks/sft_packing.py --smoke    # tiny random model, shared medical dialogues, 2 short steps (CI)

Ends with `RESULT sft_packing <packed tok/s> tokens/s baseline=<padded tok/s> ratio=<x>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


SHARED_DATA = "general_sft/medical_sft_1k.jsonl"


def _default_data(smoke: bool) -> Path:
    """A run's instruct/train.jsonl, else (always with --smoke) the shared medical dialogues."""
    from qihuang.config import data_file

    runs = [] if smoke else sorted(Path("runs").glob("*/instruct/train.jsonl"))
    return runs[0] if runs else data_file(SHARED_DATA)


def measure(model_name: str, data: Path, packing: bool, steps: int, batch: int, max_length: int,
            samples: int) -> dict[str, float]:
    """Train `steps` LoRA steps and return real tokens/s (padding excluded) and padding share."""
    from transformers import set_seed

    from qihuang.finetune.data import to_dataset
    from qihuang.finetune.outputs import load_start_model
    from qihuang.finetune.sft import SFTConfig, build_data, build_trainer
    from qihuang.models import prepare_model

    set_seed(0)
    cfg = SFTConfig(data=[data], max_samples=samples, val_fraction=0.0, early_stopping_patience=0,
                    max_length=max_length, packing=packing, max_steps=steps, batch_size=batch, eval_steps=10**6,
                    qa_samples=0)
    model, tok, _ = load_start_model(prepare_model(model_name))
    with tempfile.TemporaryDirectory() as tmp:
        train, _, summary = build_data(cfg, tok, Path(tmp))
        ds = to_dataset(train, packing, max_length, 0)
        trainer = build_trainer(cfg, model, tok, ds, None, Path(tmp) / "ckpt", [])
        trainer.args.save_strategy = "no"
        t0 = time.time()
        result = trainer.train()
        wall = time.time() - t0
    runtime = float(result.metrics.get("train_runtime", wall))
    real = trainer.qihuang_collator.trained_tokens(trainer.state.global_step)  # non-padding tokens trained on
    return {"tokens_per_s": real / runtime, "real_tokens": real, "seconds": runtime,
            "dialogues": summary["train_dialogues"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--smoke", action="store_true",
                    help=f"tiny random model, {SHARED_DATA}, 2 steps of 4 × 128 tokens, 16 dialogues (CI)")
    a = ap.parse_args()
    if a.smoke:
        a.model, a.steps, a.max_length, a.samples = "tiny-llama", 2, 128, 16
    import torch

    torch.set_num_threads(a.threads)
    data = a.data or _default_data(a.smoke)
    print(f"model={a.model} data={data} steps={a.steps} batch={a.batch_size} max_length={a.max_length} "
          f"threads={a.threads}")
    base = measure(a.model, data, False, a.steps, a.batch_size, a.max_length, a.samples)
    print(f"padded : {base['tokens_per_s']:.1f} real tokens/s ({base['real_tokens']} tokens, {base['seconds']:.1f}s)")
    packed = measure(a.model, data, True, a.steps, a.batch_size, a.max_length, a.samples)
    print(f"packed : {packed['tokens_per_s']:.1f} real tokens/s ({packed['real_tokens']} tokens, "
          f"{packed['seconds']:.1f}s)")
    ratio = packed["tokens_per_s"] / base["tokens_per_s"]
    print(f"RESULT sft_packing {packed['tokens_per_s']:.1f} tokens/s baseline={base['tokens_per_s']:.1f} "
          f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
