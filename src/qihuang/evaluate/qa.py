"""Open QA: load question/reference(/source) files (qihuang held-out QA, simple JSONL, CMB-Clin JSON), generate
answers, and score them: character-level ROUGE-L (rouge-chinese), BLEU-4, answer length and faithfulness to the
source passage (#5's grounding score)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.evaluate.mcq_formats import EvalDataError, json_records
from qihuang.textmetrics import bleu4, chars, rouge_l

REFERENCE_KEYS = ("reference", "answer", "output", "response")
SOURCE_KEYS = ("source", "passage")


@dataclass
class QAItem:
    """One open question, its reference answer and (optionally) the passage the answer should rest on."""

    question: str
    reference: str
    source: str | None
    row: int


@dataclass
class QASet:
    """Valid items of a QA file and the records skipped."""

    path: Path
    format: str
    items: list[QAItem]
    skipped: list[dict[str, Any]]


def _first(rec: dict[str, Any], keys: Sequence[str]) -> str:
    for k in keys:
        v = rec.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return ""


def load_qa(path: Path, limit: int = 0) -> QASet:
    """Read a QA file: JSONL/JSON records with `question` + `reference` (or `answer`/`output`) and an optional
    `source` passage, or CMB-Clin (`description` + `QA_pairs`: the case text is put before each question)."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    records = json_records(path)
    items: list[QAItem] = []
    skipped: list[dict[str, Any]] = []
    fmt = "cmb-clin" if records and isinstance(records[0], dict) and "QA_pairs" in records[0] else "qa-jsonl"
    row = 0
    for rec in records:
        if fmt == "cmb-clin":
            case = _first(rec, ("description",)) if isinstance(rec, dict) else ""
            pairs = rec.get("QA_pairs") if isinstance(rec, dict) else None
            for pair in pairs if isinstance(pairs, list) else [None]:
                row += 1
                q = _first(pair, ("question",)) if isinstance(pair, dict) else ""
                a = _first(pair, ("answer",)) if isinstance(pair, dict) else ""
                if not (case and q and a):
                    skipped.append({"row": row, "reason": "missing case, question or answer"})
                    continue
                items.append(QAItem(f"{case}\n\n{q}", a, None, row))
            continue
        row += 1
        if not isinstance(rec, dict):
            skipped.append({"row": row, "reason": "not a JSON object"})
            continue
        rec = {str(k).lower(): v for k, v in rec.items()}
        q, a = _first(rec, ("question", "instruction")), _first(rec, REFERENCE_KEYS)
        if not q or not a:
            skipped.append({"row": row, "reason": "empty question or reference"})
            continue
        items.append(QAItem(q, a, _first(rec, SOURCE_KEYS) or None, row))
    if not items:
        raise EvalDataError(f"{path}: no valid question/reference pair among {row} record(s)")
    if limit:
        items = items[:limit]
        skipped = [s for s in skipped if s["row"] < items[-1].row]
    return QASet(path, fmt, items, skipped)


def faithfulness(answer: str, source: str) -> float:
    """Share of the answer's content supported by `source` (#5's `grounding_score`, same measure as training data)."""
    from qihuang.textmetrics import grounding_score

    return float(grounding_score(answer, source))


def score_each(items: Sequence[QAItem], answers: Sequence[str]) -> list[dict[str, Any]]:
    """Per-item scores: ROUGE-L, smoothed sentence BLEU-4, length and (with a source) faithfulness of the answer
    and of the reference."""
    per: list[dict[str, Any]] = []
    for it, ans in zip(items, answers, strict=True):
        rec: dict[str, Any] = {"row": it.row, "answer": ans, "rouge_l": rouge_l(ans, it.reference),
                               "bleu4": bleu4([ans], [it.reference], smooth=True), "length": len(chars(ans))}
        if it.source:
            rec["faithfulness"] = faithfulness(ans, it.source)
            rec["reference_faithfulness"] = faithfulness(it.reference, it.source)
        per.append(rec)
    return per


def summarize_scores(per: Sequence[dict[str, Any]], references: Sequence[str]) -> dict[str, Any]:
    """Aggregate metrics of `score_each` records (non-empty) and their references: means, corpus BLEU-4."""
    n = len(per)
    with_src = [p for p in per if "faithfulness" in p]
    return {
        "n": n,
        "rouge_l": sum(p["rouge_l"] for p in per) / n,
        "bleu4": bleu4([p["answer"] for p in per], list(references)),
        "sentence_bleu4": sum(p["bleu4"] for p in per) / n,
        "length": sum(p["length"] for p in per) / n,
        "reference_length": sum(len(chars(r)) for r in references) / n,
        "faithfulness": (sum(p["faithfulness"] for p in with_src) / len(with_src)) if with_src else None,
        "reference_faithfulness": (sum(p["reference_faithfulness"] for p in with_src) / len(with_src))
        if with_src else None,
        "n_with_source": len(with_src),
    }


def score_answers(items: Sequence[QAItem], answers: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Aggregate metrics and per-item scores for generated `answers` to `items`."""
    per = score_each(items, answers)
    return summarize_scores(per, [it.reference for it in items]), per


def evaluate_qa_set(model: Any, tokenizer: Any, data: QASet, max_new_tokens: int = 96,
                    progress: Callable[[int, int], None] | None = None, defaults: dict[str, Any] | None = None,
                    batch_size: int = 16, batch_tokens: int = 0) -> tuple[dict[str, Any], list[dict]]:
    """Answer every item closed-book with the served prompt (chat template + the model's saved `defaults`), in
    batches through `qihuang.decoding.generate_batch`, and score the answers."""
    from qihuang.evaluate.conditions import generate, render

    t0 = time.time()
    prompts = [render(tokenizer, defaults or {}, [{"role": "user", "content": it.question}]) for it in data.items]
    answers = generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress, batch_tokens=batch_tokens)
    summary, per = score_answers(data.items, answers)
    summary.update({"format": data.format, "skipped": len(data.skipped),
                    "skipped_rows": [s["row"] for s in data.skipped], "max_new_tokens": max_new_tokens,
                    "seconds": round(time.time() - t0, 2)})
    return summary, per
