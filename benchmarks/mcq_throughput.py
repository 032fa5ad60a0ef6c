"""MCQ scoring throughput on CPU: prefix sharing + batching (ours) vs a naive per-option forward loop, same run.

    python benchmarks/mcq_throughput.py [--model smollm2-135m] [--file F ...] [--n 48] [--n-naive 8]
        [--batch-size 4] [--threads 2] [--formulation cf|mcf]
    python benchmarks/mcq_throughput.py --smoke     # tiny random model, 8 questions, naive loop on 4 (CI)

Default questions: the first 4-option questions of the six CMMLU medical subjects (clinical_knowledge,
college_medicine, professional_medicine, anatomy, nutrition, virology), split evenly. Both paths score the same
questions zero-shot, every option's answer: its text after the question alone in the default cloze formulation
`cf`, or its answer line after the listed options in `mcf`. The naive loop (one full forward per option) runs on
`--n-naive` of them spread over the files, and the log-likelihoods are checked to agree. Ours
(`evaluate_mcq_set`, the production path) runs the instruction header once (its KV cache reused), and packs each
question's prompt with all of its options behind it into one sequence (tree attention mask, positions restarting
per option), several questions per forward, the LM head only where an option token is predicted. Ends with one line:
`RESULT mcq_throughput <q/s> questions/s baseline=<q/s> ratio=<x>`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from qihuang.evaluate import EvalConfig
from qihuang.evaluate.mcq import evaluate_mcq_set, score_options_naive
from qihuang.evaluate.mcq_formats import MCQSet, answer_text, format_question, load_mcq, shared_text
from qihuang.evaluate.runner import parse_spec
from qihuang.models import load_model

MEDICAL = ("clinical_knowledge", "college_medicine", "professional_medicine", "anatomy", "nutrition", "virology")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--file", action="append", default=None,
                    help="multiple-choice file with 4-option questions (path or shared-data name; repeatable). "
                         f"Default: the {len(MEDICAL)} CMMLU medical subjects")
    ap.add_argument("--n", type=int, default=48,
                    help="questions scored by the batched, prefix-shared path (split evenly over the files)")
    ap.add_argument("--n-naive", type=int, default=8, help="questions scored by the naive loop")
    ap.add_argument("--batch-size", type=int, default=EvalConfig().mcq_batch_size,
                    help="questions per forward (default: EvalConfig.mcq_batch_size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formulation", choices=["cf", "mcf"], default="cf",
                    help="cf: question alone, option texts scored (the eval default); mcf: options listed")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model, 8 questions, 4 naive, 1 thread (seconds, CI)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.n, args.n_naive, args.threads = "tiny-llama", 8, 4, 1

    torch.set_num_threads(args.threads)
    files = args.file or [f"eval/cmmlu/test/{name}.csv" for name in MEDICAL]
    per_file = -(-args.n // len(files))
    items = []
    for spec in files:
        path, _ = parse_spec(spec, 0)
        items += [it for it in load_mcq(path).items if len(it.options) == 4][:per_file]
    items = items[: args.n]
    if len(items) < max(args.n_naive, 1):
        raise SystemExit(f"{', '.join(files)}: only {len(items)} 4-option questions")
    naive_items = items[:: max(1, len(items) // args.n_naive)][: args.n_naive]  # spread over the files
    model, tok = load_model(args.model)
    model.eval()
    cloze = args.formulation == "cf"
    common = shared_text(cloze=cloze)  # the instruction header (plus few-shot examples when used): cached once
    n_tokens = sum(len(tok(common + format_question(it, cloze), add_special_tokens=False).input_ids)
                   for it in items) / len(items)
    print(f"model {args.model}, files {', '.join(Path(f).stem for f in files)}, {len(items)} questions (4 options), mean prompt {n_tokens:.0f} tokens, "
          f"threads {args.threads}, formulation {args.formulation}")

    warm = MCQSet(Path(files[0]), "bench", items[:2])
    evaluate_mcq_set(model, tok, warm, batch_size=args.batch_size, n_boot=100, formulation=args.formulation)
    t0 = time.perf_counter()  # the production path: evaluate_mcq_set (shared header cache, sorted batches)
    summary, preds = evaluate_mcq_set(model, tok, MCQSet(Path(files[0]), "bench", items), batch_size=args.batch_size,
                                      n_boot=100, formulation=args.formulation)
    ours_qps = len(items) / (time.perf_counter() - t0)
    ours = [p["ll"] for p in preds[:: max(1, len(items) // args.n_naive)][: args.n_naive]]

    t0 = time.perf_counter()
    naive = [score_options_naive(model, tok, format_question(it, cloze), [answer_text(it, k, cloze) for k in it.options],
                                 shared_text=common) for it in naive_items]
    naive_qps = len(naive) / (time.perf_counter() - t0)

    diff = max(abs(a - b) for o, n in zip(ours, naive) for a, b in zip(o, n.ll))
    same = sum(max(range(4), key=o.__getitem__) == max(range(4), key=n.ll.__getitem__) for o, n in zip(ours, naive))
    print(f"ours  (prefix shared, options batched, {args.batch_size} question(s)/forward): {ours_qps:.2f} "
          f"questions/s over {len(items)}")
    print(f"naive (one forward per option):       {naive_qps:.2f} questions/s over {len(naive)}")
    print(f"agreement on the naive subset: max |Δ log-lik| {diff:.2e} nats, same choice {same}/{len(naive)}")
    print(f"RESULT mcq_throughput {ours_qps:.2f} questions/s baseline={naive_qps:.2f} ratio={ours_qps / naive_qps:.2f}")


if __name__ == "__main__":
    main()
