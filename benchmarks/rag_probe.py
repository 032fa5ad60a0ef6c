"""Quick quality probe of models as users get them: a spread of a run's held-out-book questions asked with retrieval
over the run's index (or closed-book), the same prompts and scores as the eval stage, for several models in one run
(the demo's budget ablation), or for one model under several repetition-control settings (how the defaults of
`qihuang.decoding.DecodeParams` were chosen). benchmarks/RESULTS.md, session 4.

    python benchmarks/rag_probe.py --run runs/demo --n 48 smollm2-135m runs/demo/sft/model [MODEL@closed ...]
    python benchmarks/rag_probe.py --run runs/demo --n 48 --decoding runs/demo/sft/model
    python benchmarks/rag_probe.py --smoke [--decoding]     # tiny random model, invented passages, 1 thread (CI)

Without models: the run's SFT model (smollm2-135m on a fresh clone, whose questions come from the smoke corpus).

Ends with `RESULT rag_probe_rouge_l <last row> points baseline=<first row> ratio=<last/first>` (with --decoding:
first row = no repetition control, last row = the defaults).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _inputs import heldout_questions, model_or_base


DECODING: dict[str, tuple[float, int]] = {
    "off": (1.0, 0), "ngram 4": (1.0, 4), "ngram 8": (1.0, 8), "penalty 1.05": (1.05, 0), "penalty 1.2": (1.2, 0),
    "penalty 1.1 + ngram 8": (1.1, 8), "penalty 1.1 (default)": (1.1, 0),
}
"""Repetition-control settings swept by --decoding: (repetition_penalty, no_repeat_ngram_size)."""


def _smoke(tmp: Path) -> tuple[list[dict[str, Any]], Path]:
    passages = [{"id": f"s-{i}", "book": f"虚构书{i % 3}", "section": f"第{i}篇", "category": "医经", "start": 0,
                 "end": 30, "text": f"第{i}条：脉浮而缓者，风在表也；其{i}方主之。"} for i in range(12)]
    path = tmp / "passages.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")
    items = [{"question": f"“其{i}方主之”出自何书？", "reference": f"出自《虚构书{i % 3}》。", "task_type": "出处",
              "book": f"虚构书{i % 3}", "section": f"第{i}篇", "passage_id": f"s-{i}", "source": passages[i]["text"]}
             for i in range(6)]
    return items, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="model dirs or presets; MODEL@closed asks closed-book")
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--decoding", action="store_true", help="sweep repetition-control settings on one model")
    ap.add_argument("--only", nargs="*", default=None, help="with --decoding: only these settings (names as listed)")
    args = ap.parse_args()
    import torch

    from qihuang.decoding import DecodeParams
    from qihuang.retrieval import PassageIndex

    torch.set_num_threads(1 if args.smoke else args.threads)  # smoke: CI runs share the cores
    if args.smoke:
        items, index_spec = _smoke(Path(tempfile.mkdtemp()))
        specs = args.models or (["tiny-llama"] if args.decoding else ["tiny-llama", "tiny-llama@closed"])
    else:
        items, index_spec = heldout_questions(args.run, args.n, Path(tempfile.mkdtemp()))
        specs = [model_or_base(path) + (f"@{cond}" if cond else "")
                 for path, _, cond in (m.partition("@") for m in args.models or ["runs/demo/sft/model"])]
    index = PassageIndex.open(index_spec)
    sweep = {k: v for k, v in DECODING.items() if args.only is None or k in args.only}
    rows = [(spec, name, DecodeParams(*pair)) for spec in specs[:1] for name, pair in sweep.items()] \
        if args.decoding else [(spec, "default", DecodeParams()) for spec in specs]
    print("| model | condition | decoding | n | ROUGE-L | faithfulness | right book % | right book, attribution % | "
          "degenerate % | declined % | length | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rouge = [_row(spec, name, decode, items, index, args.max_new_tokens) for spec, name, decode in rows]
    print(f"RESULT rag_probe_rouge_l {rouge[-1]:.2f} points baseline={rouge[0]:.2f} "
          f"ratio={rouge[-1] / max(rouge[0], 1e-9):.3f}")


_LOADED: dict[str, tuple[Any, Any]] = {}


def _row(spec: str, name: str, decode: Any, items: list[dict[str, Any]], index: Any, max_new_tokens: int) -> float:
    """Answer `items` with one model/condition/decoding and print its table row; returns ROUGE-L (points)."""
    from qihuang.evaluate.conditions import aggregate, build_prompts, generate, score_item
    from qihuang.models import load_model
    from qihuang.rag import PASSAGE_CHARS, PASSAGES_K
    from qihuang.template import chat_defaults

    path, _, cond = spec.partition("@")
    if path not in _LOADED:
        _LOADED.clear()
        model, tok = load_model(path)
        _LOADED[path] = (model.eval(), tok)
    model, tok = _LOADED[path]
    defaults = chat_defaults(path) if Path(path).is_dir() else {}
    prompts, grounds, quotes = build_prompts(tok, defaults, [it["question"] for it in items], cond or "rag", index,
                                             PASSAGES_K, PASSAGE_CHARS)
    t0 = time.time()
    answers = generate(model, tok, prompts, max_new_tokens, 16, decode=decode, grounds=grounds, quotes=quotes)
    r = aggregate([score_item(it, a, g.hits) for it, a, g in zip(items, answers, grounds, strict=True)])
    print(f"| {path} | {cond or 'rag'} | {name} | {r['n']} | {100 * r['rouge_l']:.1f} | "
          f"{100 * (r['faithfulness'] or 0):.1f} | {100 * (r['citation_book'] or 0):.1f} | "
          f"{100 * (r['citation_book_attribution'] or 0):.1f} | {100 * r['degenerate']:.1f} | "
          f"{100 * r['declined']:.1f} | {r['length']:.0f} | {time.time() - t0:.0f} |", flush=True)
    return 100 * r["rouge_l"]


if __name__ == "__main__":
    main()
