"""Which tensors carry the gradient spikes of continual pretraining: runs `pretrain` for a few steps and prints,
per optimizer step, the total gradient norm (before clipping) and the largest per-tensor norms.

    python benchmarks/grad_norm_tensors.py --model runs/demo/tokenizer/model [--steps 40] [--learning-rate 5e-4]
        [--seed 0]
    python benchmarks/grad_norm_tensors.py --smoke     # tiny random model, 4 shared books, 6 steps, 1 thread (CI)

Same settings as the demo's pretraining (seq 128 × micro-batch 4, warm-up 5, cosine over 152 steps, 2 threads), no
evaluation. Prints one line per step: `GRAD <step> total=<norm> <tensor>=<norm> ...` (top 4), a JSON summary, and
ends with `RESULT grad_norm_max <largest total> norm baseline=<median total> ratio=<largest / median>` (how far the
worst spike stands above a typical step of the same run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import accelerate
from _inputs import smoke_corpus

from qihuang.models import prepare_model
from qihuang.pretrain import PretrainConfig, pretrain
from qihuang.runs import StageDir, run_stage
from qihuang.training import loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="required unless --smoke")
    ap.add_argument("--train", default="runs/demo/corpus/train.jsonl")
    ap.add_argument("--heldout", default="runs/demo/corpus/heldout.jsonl")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--learning-rate", "--lr", type=float, default=5e-4,
                    help="peak LR (pretrain.learning_rate; --lr: its earlier name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 4 shared books, 6 steps (seconds, CI)")
    a = ap.parse_args()
    if a.model is None and not a.smoke:
        ap.error("--model is required (or --smoke)")
    with tempfile.TemporaryDirectory(prefix="qh-grad-norms-") as tmp:
        if a.smoke:
            corpus = smoke_corpus(Path(tmp))
            a.model, a.train, a.heldout, a.steps, a.threads = ("tiny-llama", str(corpus / "train.jsonl"),
                                                                str(corpus / "heldout.jsonl"), 6, 1)
        rows = record(a)
    report(rows)


def report(rows: list[dict[str, Any]]) -> None:
    """The GRAD lines, the JSON summary and the RESULT line."""
    for step, r in enumerate(rows, 1):
        top = " ".join(f"{n.replace('model.', '').replace('.weight', '')}={v:.1f}" for v, n in r["top"])
        print(f"GRAD {step} total={r['total']:.1f} {top}")
    print(json.dumps({"steps": len(rows), "over_20": sum(r["total"] > 20 for r in rows[10:])}))
    totals = [r["total"] for r in rows]
    peak, typical = max(totals), statistics.median(totals)
    print(f"RESULT grad_norm_max {peak:.2f} norm baseline={typical:.2f} ratio={peak / typical:.2f} "
          f"(largest vs median total gradient norm over {len(rows)} steps)")


def record(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the pretrain stage for `a.steps` steps; per step, the total and the top-4 per-tensor gradient norms."""
    names: dict[int, str] = {}
    rows: list[dict[str, Any]] = []
    train_loop, clip = loop.train_loop, accelerate.Accelerator.clip_grad_norm_

    def named_loop(model: Any, *args: Any, **kw: Any) -> Any:
        names.update({id(p): n for n, p in model.named_parameters()})
        return train_loop(model, *args, **kw)

    def recording_clip(self: Any, params: Any, max_norm: float, norm_type: float = 2) -> Any:
        params = list(params)
        norms = sorted(((float(p.grad.norm()), names.get(id(p), "?")) for p in params if p.grad is not None),
                       reverse=True)
        rows.append({"total": sum(n * n for n, _ in norms) ** 0.5, "top": norms[:4]})
        return clip(self, params, max_norm, norm_type)

    loop.train_loop = named_loop  # the stage imports the loop from its module when it runs
    accelerate.Accelerator.clip_grad_norm_ = recording_clip
    cfg = PretrainConfig(max_steps=a.steps, schedule_steps=152, seq_len=128, batch_size=4,
                         learning_rate=a.learning_rate, warmup_steps=5, eval_chars=0, eval_base=False,
                         checkpoint_every_steps=0, checkpoint_every_minutes=0,
                         tensorboard=False, threads=a.threads, seed=a.seed)
    model = prepare_model(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        out = StageDir(Path(tmp) / "pretrain")
        run_stage(out, cfg, lambda: pretrain(cfg, model, Path(a.train), Path(a.heldout), out))
    return rows


if __name__ == "__main__":
    main()
