"""Re-score an eval's retrieval rows under the current answer guard without generating again: the guard reads only
what the model wrote (`model_answer` in the eval's predictions), the question and the cited passage, so a change to
it can be measured on stored answers in seconds.

    python benchmarks/guard_rescore.py --run runs/demo              # every `*__rows__rag.jsonl` of the run's eval
    python benchmarks/guard_rescore.py --smoke                      # invented predictions (CI; also what a fresh
                                                                    # clone without runs/demo scores)

Ends with `RESULT guard_rescore_clean <shown %> percent baseline=<model's own %> ratio=<shown/own>` for the last row:
the share of answers that are not degenerate, as users get them and as the model wrote them (higher is better).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def _smoke(tmp: Path) -> Path:
    (tmp / "eval" / "predictions").mkdir(parents=True)
    qa = [{"question": f"“苦能燥湿{i}”出自何书？", "reference": "出自《虚构本草》。", "book": "虚构本草", "section": "黄连",
           "passage_id": f"p{i}", "task_type": "出处", "source": "黄连味苦寒。苦能燥湿，寒能清热。"} for i in range(4)]
    (tmp / "eval" / "heldout_books_qa.jsonl").write_text(
        "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qa), encoding="utf-8")
    opening = "据《虚构本草·黄连》："
    raw = [opening + "黄连味苦寒。", opening + "主之主之主之主之", opening + "\n据《虚构本草·黄连：“下”。", opening]
    preds = [{"passage_id": q["passage_id"], "opening": opening, "model_answer": a, "hits": [
        {"id": q["passage_id"], "book": "虚构本草", "section": "黄连", "score": 1.0}]} for q, a in zip(qa, raw)]
    (tmp / "eval" / "predictions" / "m__rows__rag.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    passages = [{"id": f"p{i}", "book": "虚构本草", "section": "黄连", "text": qa[0]["source"]} for i in range(4)]
    (tmp / "passages.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages),
                                        encoding="utf-8")
    return tmp


def _rescore(pred_file: Path, items: list[dict[str, Any]], passages: dict[str, Any],
             min_support: float) -> dict[str, Any]:
    from qihuang.answer_guard import Support, guard_answer
    from qihuang.evaluate.conditions import aggregate, score_items
    from qihuang.retrieval import Hit

    preds = [json.loads(x) for x in pred_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    shown, hits, acts = [], [], []
    for p, it in zip(preds, items, strict=True):
        found = [Hit(passages[h["id"]], h["score"], r) for r, h in enumerate(p["hits"], 1) if h["id"] in passages]
        cited = next((h.passage for h in found if p.get("opening") == f"据{h.passage.title}："), None)
        support = Support.of(it["question"], [h.passage for h in found], min_support)
        out = guard_answer(p["model_answer"], it["question"], cited, p.get("opening", ""), support)
        shown.append(out.text)
        hits.append(found)
        acts.append(out)
    row = aggregate(score_items(items, shown, hits))
    own = aggregate(score_items(items, [p["model_answer"] for p in preds], hits))
    return {"n": row["n"], "rouge_l": row["rouge_l"], "faithfulness": row["faithfulness"],
            "citation_book": row["citation_book"], "degenerate": row["degenerate"], "own_degenerate": own["degenerate"],
            "cut": sum(a.cut for a in acts) / len(acts), "quoted": sum(a.fallback for a in acts) / len(acts),
            "unsupported": sum(a.unsupported for a in acts) / len(acts), "length": row["length"],
            "model_rouge_l": own["rouge_l"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--support", type=float, nargs="*", default=None,
                    help="least supported share of a sentence's bigrams (0 = off), several to sweep; default: the "
                         "eval default (`EvalConfig.answer_support`)")
    args = ap.parse_args()
    from qihuang.evaluate import EvalConfig
    from qihuang.retrieval import PassageIndex

    run = args.run
    smoke = args.smoke or not any((run / "eval" / "predictions").glob("*__rows__rag.jsonl"))
    if smoke and not args.smoke:
        print(f"{run}/eval has no retrieval rows to re-score (run `qihuang run recipes/demo.yaml`): scoring the "
              "invented --smoke answers instead", flush=True)
    run = _smoke(Path(tempfile.mkdtemp())) if smoke else run
    qa_file = run / "eval" / "heldout_books_qa.jsonl"
    files = sorted((run / "eval" / "predictions").glob("*__rows__rag.jsonl"))
    if not qa_file.exists():
        sys.exit(f"{qa_file} not found: the eval stage writes it with its predictions")
    items = [json.loads(x) for x in qa_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    index = PassageIndex.open(run / "passages.jsonl" if smoke else run)
    wanted = {h["id"] for f in files for x in f.read_text(encoding="utf-8").splitlines() if x.strip()
              for h in json.loads(x)["hits"]}
    passages = {p.id: p for p in index.passages if p.id in wanted}
    print("| predictions | support | n | ROUGE-L (model's own) | faithfulness | right book % | "
          "degenerate % (shown / own) | cut % (unsupported) | quoted % | chars |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    r: dict[str, Any] = {}
    for f in files:
        for min_support in args.support if args.support is not None else [EvalConfig().answer_support]:
            r = _rescore(f, items, passages, min_support)
            print(f"| {f.name} | {min_support:g} | {r['n']} | {100 * r['rouge_l']:.1f} ({100 * r['model_rouge_l']:.1f}) | "
                  f"{100 * (r['faithfulness'] or 0):.1f} | {100 * (r['citation_book'] or 0):.1f} | "
                  f"{100 * r['degenerate']:.1f} / {100 * r['own_degenerate']:.1f} | {100 * r['cut']:.1f} "
                  f"({100 * r['unsupported']:.1f}) | {100 * r['quoted']:.1f} | {r['length']:.0f} |", flush=True)
    shown, own = 1 - r["degenerate"], 1 - r["own_degenerate"]
    print(f"RESULT guard_rescore_clean {100 * shown:.2f} percent baseline={100 * own:.2f} "
          f"ratio={shown / max(own, 1e-9):.3f}")


if __name__ == "__main__":
    main()
