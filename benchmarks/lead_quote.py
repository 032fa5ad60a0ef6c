"""Which sentence an answer quotes first, without a model: each held-out question is grounded as serving grounds it
(`rag.ground`: retrieval, the cited passage, the opening) and the answer "opening + “lead”" — the sentence the system
pins the first quotation to (`answer_guard.lead_quote`), which the base's fallback quotes too — is scored against
the reference (ROUGE-L on characters), by question type. Baseline in the same run: the same opening and cited passage
with the sentence matching the whole question best (`retrieval.best_span`, no rank; the rule before session 21).

    python benchmarks/lead_quote.py --run runs/demo     # the run's eval/heldout_books_qa.jsonl and index
    python benchmarks/lead_quote.py --smoke             # invented passages and questions (CI)

Ends with `RESULT lead_quote <ROUGE-L %> percent baseline=<best-overlap sentence %> ratio=<ours/baseline>`.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path
from typing import Any

SMOKE_PASSAGES = [
    {"id": "a:0-60", "book": "假托时病", "section": "卷三/春伤于风夏生飧泄大意/洞泄", "start": 0,
     "text": "经云：春伤于风，夏生飧泄，邪气留连，乃为洞泄。考其脉象，软缓乏力，下利清谷，小便短赤是也。"},
    {"id": "a:60-120", "book": "假托时病", "section": "卷八/冬温", "start": 60,
     "text": "冬温虽发于冬时，用药与伤寒迥别。昔贤谓冬应寒而反温，人感之而即病者，名曰冬温是也。"},
    {"id": "b:0-40", "book": "假托本草", "section": "卷一/黄连", "start": 0, "text": "黄连味苦寒，主热气目痛。苦能燥湿，寒能清热。"},
]
SMOKE_QA = [
    ("《假托时病》「卷三·春伤于风夏生飧泄大意·洞泄」中是怎样论述“下利清谷”的？",
     "《假托时病》原文：考其脉象，软缓乏力，下利清谷，小便短赤是也。", "术语语境"),
    ("什么叫冬温？请依据《假托时病》回答。", "据《假托时病》：昔贤谓冬应寒而反温，人感之而即病者，名曰冬温是也。", "名词概念"),
    ("“苦能燥湿，寒能清热。”出自哪部医书？", "出自《假托本草》·卷一·黄连。原文作：“苦能燥湿，寒能清热。”", "出处"),
]


def _smoke(tmp: Path) -> tuple[Path, Path]:
    passages = tmp / "passages.jsonl"
    passages.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in SMOKE_PASSAGES), encoding="utf-8")
    qa = tmp / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": q, "reference": r, "task_type": t}, ensure_ascii=False) + "\n"
                          for q, r, t in SMOKE_QA), encoding="utf-8")
    return passages, qa


def score(items: list[dict[str, Any]], index: Any) -> dict[str, dict[str, list[float]]]:
    """Per type: ROUGE-L of opening + “lead” (ours) and of opening + “best-overlap sentence” (baseline)."""
    from qihuang.answer_guard import lead_quote
    from qihuang.rag import clean_passage_text, ground
    from qihuang.retrieval import best_span
    from qihuang.textmetrics import rouge_l

    out: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: {"ours": [], "baseline": []})
    for it in items:
        g = ground(index, it["question"], 3)
        if g.cited is None:  # declined, or nothing retrieved: the same answer for both
            ours = base = g.answer or ""
        else:
            s, e = best_span(g.cited.text, it["question"], 80)
            ours = f"{g.prefix}“{lead_quote(g.cited, it['question'])}”"
            base = f"{g.prefix}“{clean_passage_text(g.cited.text[s:e])}”"
        for t in (str(it.get("task_type") or "?"), "all"):
            out[t]["ours"].append(rouge_l(ours, it["reference"]))
            out[t]["baseline"].append(rouge_l(base, it["reference"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    from qihuang.retrieval import PassageIndex

    qa_file = args.run / "eval" / "heldout_books_qa.jsonl"
    if args.smoke or not qa_file.exists():
        if not args.smoke:
            print(f"{qa_file} not found (run `qihuang run recipes/demo.yaml`): scoring the --smoke questions instead")
        spec, qa_file = _smoke(Path(tempfile.mkdtemp()))
    else:
        spec = args.run
    items = [json.loads(x) for x in qa_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    by = score(items, PassageIndex.open(spec))
    print("| type | n | ROUGE-L: opening + lead | opening + best-overlap sentence |")
    print("|---|---|---|---|")
    mean = {t: {k: 100 * sum(v) / len(v) for k, v in d.items()} for t, d in by.items()}
    for t in sorted(by, key=lambda t: (t == "all", -len(by[t]["ours"]))):
        print(f"| {t} | {len(by[t]['ours'])} | {mean[t]['ours']:.1f} | {mean[t]['baseline']:.1f} |")
    ours, base = mean["all"]["ours"], mean["all"]["baseline"]
    print(f"RESULT lead_quote {ours:.2f} percent baseline={base:.2f} ratio={ours / max(base, 1e-9):.3f}")


if __name__ == "__main__":
    main()
