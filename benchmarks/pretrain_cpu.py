"""CPU training throughput: qihuang's loop (packed blocks, document-aware positions, loss only on real tokens,
for-each AdamW, deliberate threads) vs a plain Hugging Face `Trainer` (one passage per row, dynamic padding) on
the same model, passages, micro-batch and sequence length, in the same process. Both count real (non-pad)
tokens. Ends with `RESULT pretrain_cpu <ours> tokens/s baseline=<hf> ratio=<x>`.

    python benchmarks/pretrain_cpu.py [--model smollm2-135m] [--train runs/demo/corpus/train.jsonl]
    python benchmarks/pretrain_cpu.py --smoke    # tiny random model, 4 shared books, seq 64 × 2, 3 steps (CI)

Without the --train file (a fresh clone) it first builds a small corpus (12 books, ~20 s) into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _inputs import corpus_file, smoke_corpus  # noqa: E402


def passages(path: Path, n: int, seed: int) -> list[str]:
    from qihuang.training.data import read_texts

    texts = read_texts(path)
    random.Random(seed).shuffle(texts)
    return texts[:n]


def ours(model_dir: str, texts: list[str], seq: int, mb: int, warm: int, steps: int, lr: float) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qihuang.training.data import pack_documents
    from qihuang.pretrain import PretrainConfig
    from qihuang.training.loop import train_loop

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    data = pack_documents(tok, texts, seq, seed=0)
    s = PretrainConfig(seq_len=seq, batch_size=mb, grad_accum=1, learning_rate=lr, warmup_steps=0, min_lr_ratio=0.1,
                       weight_decay=0.0, clip=1.0, max_steps=warm + steps, schedule_steps=warm + steps,
                       max_minutes=None, fit_schedule=False, checkpoint_every_steps=0, checkpoint_every_minutes=0.0,
                       keep_checkpoints=1, eval_every=0, log_every=1, ce_chunk_tokens=0, compile=False, doc_mask=True,
                       tensorboard=False)

    class Rows:
        rows: list[dict[str, Any]] = []

        def log(self, **kw: Any) -> None:
            self.rows.append(kw)

    rows = Rows()
    with tempfile.TemporaryDirectory() as tmp:
        train_loop(model, data, s, Accelerator(cpu=True), Path(tmp) / "ck", rows, None)
    timed = [r for r in rows.rows if "tokens_per_s" in r and r["step"] > warm]
    secs = sum(mb * seq / r["tokens_per_s"] for r in timed)
    return {"tokens_per_s": len(timed) * mb * seq / secs, "seconds": secs, "tokens": len(timed) * mb * seq,
            "losses": [r["loss"] for r in rows.rows if "loss" in r]}


def hf_trainer(model_dir: str, texts: list[str], seq: int, mb: int, warm: int, steps: int, lr: float) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainerCallback, TrainingArguments)

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], truncation=True, max_length=seq), batched=True, remove_columns=["text"])
    base = DataCollatorForLanguageModeling(tok, mlm=False)
    counted: list[int] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = base(features)
        counted.append(int(batch["attention_mask"].sum()))
        return batch

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=mb, max_steps=warm + steps,
                                 learning_rate=lr, lr_scheduler_type="cosine", max_grad_norm=1.0, use_cpu=True,
                                 bf16=False, report_to=[], save_strategy="no", logging_steps=10_000,
                                 dataloader_num_workers=0, seed=0, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=ds, data_collator=collate, processing_class=tok,
                callbacks=[Clock()]).train()
    secs = stamps[-1] - stamps[warm - 1]
    tokens = sum(counted[warm:warm + steps])
    padded = len(counted[warm:warm + steps])
    return {"tokens_per_s": tokens / secs, "seconds": secs, "tokens": tokens, "batches": padded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="preset or HF directory")
    ap.add_argument("--train", type=Path, default=Path("runs/demo/corpus/train.jsonl"),
                    help="passages JSONL (missing: a small corpus is built first)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", "--micro-batch", type=int, default=4,
                    help="sequences per forward/backward pass (pretrain.batch_size; --micro-batch: its earlier name)")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps (after 1 warm-up step)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    ap.add_argument("--passages", type=int, default=400)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model, 4 shared books, seq 64 × batch 2, 3 steps, 1 thread (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.seq_len, args.batch_size, args.steps, args.threads, args.passages = \
            "tiny-llama", 64, 2, 3, 1, 40
    import torch

    from qihuang.models import prepare_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(prepare_model(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.train = smoke_corpus(Path(tmp)) / "train.jsonl"
        texts = passages(corpus_file(args.train, Path(tmp), "train.jsonl"), args.passages, 0)
    warm, lr = 1, 5e-4
    a = ours(model_dir, texts, args.seq_len, args.batch_size, warm, args.steps, lr)
    print(f"qihuang: {a['tokens_per_s']:.1f} tokens/s ({a['tokens']} tokens in {a['seconds']:.1f} s)", flush=True)
    b = hf_trainer(model_dir, texts, args.seq_len, args.batch_size, warm, args.steps, lr)
    print(f"HF Trainer: {b['tokens_per_s']:.1f} real tokens/s ({b['tokens']} of "
          f"{b['batches'] * args.batch_size * args.seq_len} padded-max slots in {b['seconds']:.1f} s)", flush=True)
    print(f"model={model_dir} seq_len={args.seq_len} batch_size={args.batch_size} threads={torch.get_num_threads()}")
    print(f"RESULT pretrain_cpu {a['tokens_per_s']:.1f} tokens/s baseline={b['tokens_per_s']:.1f} "
          f"ratio={a['tokens_per_s'] / b['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
