"""The served system on held-out-book QA: rows of model x condition (closed-book, or with retrieval through the
same prompt builder serving uses), batched answers, per-answer scores and row / per-type summaries, paired bootstrap
differences to the base model of the same condition, and the off-topic probe."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qihuang.decoding import DecodeParams
from qihuang.evaluate.answers import ATTRIBUTION_TYPES, answer_flags, is_degenerate
from qihuang.retrieval import Hit, PassageIndex

CONDITIONS = ("closed", "rag")
"""closed: the question alone; rag: the top passages_k passages before it (`rag.rag_messages`)."""
PAIRED_METRICS = ("rouge_l", "faithfulness", "citation_book", "citation_section", "degenerate", "declined")
"""Per-answer figures compared with the base row of the same condition (paired bootstrap)."""


def resolve_rows(specs: Sequence[str], labels: Sequence[str]) -> list[tuple[str, str]]:
    """(label, condition) rows in spec order, without repeats. `*` is every model, `first` / `base` the first (or
    the one labelled base), `last` the last; a label of a model not evaluated is skipped."""
    rows: list[tuple[str, str]] = []
    for spec in specs:
        who, _, cond = spec.rpartition(":")
        if who == "*":
            picked = list(labels)
        elif who == "first" or (who == "base" and "base" not in labels):
            picked = list(labels[:1])
        elif who == "last":
            picked = list(labels[-1:])
        else:
            picked = [who] if who in labels else []
        rows += [(lb, cond) for lb in picked if (lb, cond) not in rows]
    return rows


def render(tokenizer: Any, defaults: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    """The served prompt: `template.render_prompt(tok, with_defaults(messages, defaults))` (what
    `serve.engine.PromptCodec` renders); the bare user text for a tokenizer without a chat template."""
    from qihuang.template import TemplateError, render_prompt, with_defaults

    try:
        return render_prompt(tokenizer, with_defaults(messages, defaults))
    except TemplateError:
        return str(messages[-1]["content"])


def build_prompts(tokenizer: Any, defaults: dict[str, Any], questions: Sequence[str], condition: str,
                  index: PassageIndex | None, k: int, passage_chars: int) -> tuple[list[str], list[list[Hit]]]:
    """Rendered prompts and the hits each carries (none closed-book): `rag.retrieve` + `rag.rag_messages`."""
    from qihuang.rag import rag_messages, retrieve

    prompts, hits = [], []
    for q in questions:
        found = retrieve(index, q, k) if condition == "rag" else []
        msgs, _ = rag_messages([{"role": "user", "content": q}], [h.passage for h in found], passage_chars)
        prompts.append(render(tokenizer, defaults, msgs))
        hits.append(found)
    return prompts, hits


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
             progress: Callable[[int, int], None] | None = None, decode: DecodeParams | None = None) -> list[str]:
    """Answers through `qihuang.decoding.generate_batch`, prompts grouped by length (less padding) and in chunks of
    a few batches so progress can be logged; returned in input order."""
    from qihuang.decoding import generate_batch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    chunk = batch_size * 4
    for start in range(0, len(order), chunk):
        ids = order[start:start + chunk]
        outs = generate_batch(model, tokenizer, [prompts[i] for i in ids], max_new_tokens, batch_size=batch_size,
                              params=decode)
        for i, a in zip(ids, outs, strict=True):
            answers[i] = a.strip()
        if progress:
            progress(min(start + chunk, len(order)), len(order))
    return answers


def _hit_record(h: Hit) -> dict[str, Any]:
    return {"id": h.passage.id, "book": h.passage.book, "section": h.passage.section, "score": round(h.score, 4)}


def score_item(item: dict[str, Any], answer: str, hits: list[Hit]) -> dict[str, Any]:
    """One prediction record: question, type, answer, hits, citations and every per-answer score."""
    from qihuang.evaluate.qa import _chars, bleu4, faithfulness, rouge_l

    rec: dict[str, Any] = {"question": item["question"], "task_type": item.get("task_type", ""),
                           "book": item.get("book", ""), "section": item.get("section", ""),
                           "passage_id": item.get("passage_id", ""), "answer": answer,
                           "reference": item["reference"], "hits": [_hit_record(h) for h in hits],
                           "gold_retrieved": any(h.passage.id == item.get("passage_id") for h in hits),
                           "rouge_l": rouge_l(answer, item["reference"]),
                           "bleu4": bleu4([answer], [item["reference"]], smooth=True), "length": len(_chars(answer))}
    if item.get("source"):
        rec["faithfulness"] = faithfulness(answer, item["source"])
    rec.update(answer_flags(answer, item, [h.passage for h in hits]))
    return rec


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(per: list[dict[str, Any]]) -> dict[str, Any]:
    """Row figures: ROUGE-L, corpus BLEU-4, faithfulness, citation right book / section (over attribution
    questions and over all with a source; an answer citing nothing counts wrong), degenerate %, declined %,
    length, and how often the gold passage was among the hits."""
    from qihuang.evaluate.qa import bleu4

    src = [p for p in per if "right_book" in p]
    attr = [p for p in src if p["task_type"] in ATTRIBUTION_TYPES]
    return {
        "n": len(per), "n_with_source": len(src), "n_attribution": len(attr),
        "rouge_l": _mean([p["rouge_l"] for p in per]) or 0.0,
        "bleu4": bleu4([p["answer"] for p in per], [p["reference"] for p in per]) if per else 0.0,
        "faithfulness": _mean([p["faithfulness"] for p in per if "faithfulness" in p]),
        "citation_book": _mean([float(p["right_book"]) for p in src]),
        "citation_section": _mean([float(p["right_section"]) for p in src]),
        "citation_book_attribution": _mean([float(p["right_book"]) for p in attr]),
        "citation_section_attribution": _mean([float(p["right_section"]) for p in attr]),
        "cites_any": _mean([float(bool(p["cited"])) for p in per]),
        "degenerate": _mean([float(p["degenerate"]) for p in per]) or 0.0,
        "declined": _mean([float(p["declined"]) for p in per]) or 0.0,
        "length": _mean([float(p["length"]) for p in per]) or 0.0,
        "gold_retrieved": _mean([float(p["gold_retrieved"]) for p in per if p["hits"]]),
    }


def vectors(per: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per-answer values of PAIRED_METRICS (None where a metric does not apply), aligned with the QA set."""
    names = {"citation_book": "right_book", "citation_section": "right_section"}
    return {m: [None if p.get(names.get(m, m)) is None else float(p[names.get(m, m)]) for p in per]
            for m in PAIRED_METRICS}


def run_row(model: Any, tokenizer: Any, defaults: dict[str, Any], items: list[dict[str, Any]], condition: str,
            index: PassageIndex | None, cfg: Any,
            progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer every item under `condition` and score it: (summary with `by_type` and `vectors`, predictions)."""
    t0 = time.time()
    prompts, hits = build_prompts(tokenizer, defaults, [it["question"] for it in items], condition, index,
                                  cfg.passages_k, cfg.passage_chars)
    answers = generate(model, tokenizer, prompts, cfg.qa_max_new_tokens, cfg.qa_batch_size, progress)
    per = [score_item(it, a, h) for it, a, h in zip(items, answers, hits, strict=True)]
    summary = aggregate(per)
    types = sorted({p["task_type"] for p in per})
    summary["by_type"] = {t: aggregate([p for p in per if p["task_type"] == t]) for t in types}
    summary.update({"condition": condition, "seconds": round(time.time() - t0, 2),
                    "questions_per_s": round(len(items) / max(time.time() - t0, 1e-9), 3)})
    return summary, per


def run_offtopic(model: Any, tokenizer: Any, defaults: dict[str, Any], questions: Sequence[str],
                 index: PassageIndex | None, cfg: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Off-topic questions with retrieval: share of answers citing any book (invented citations), declining,
    degenerate."""
    from qihuang.rag import cited_titles, says_not_covered

    prompts, hits = build_prompts(tokenizer, defaults, questions, "rag", index, cfg.passages_k, cfg.passage_chars)
    answers = generate(model, tokenizer, prompts, cfg.qa_max_new_tokens, cfg.qa_batch_size)
    per = [{"question": q, "answer": a, "hits": [_hit_record(x) for x in h],
            "cited": [list(c) for c in cited_titles(a, [x.passage for x in h])], "declined": says_not_covered(a),
            "degenerate": is_degenerate(a)} for q, a, h in zip(questions, answers, hits, strict=True)]
    n = len(per)
    return {"n": n, "invented_citation": sum(bool(p["cited"]) for p in per) / n,
            "declined": sum(p["declined"] for p in per) / n, "degenerate": sum(p["degenerate"] for p in per) / n,
            "with_hits": sum(bool(p["hits"]) for p in per) / n}, per


def add_row_pairs(rows: dict[tuple[str, str], dict[str, Any]], vecs: dict[tuple[str, str], dict[str, Any]],
                  base: str, n_boot: int, seed: int) -> None:
    """For every row whose model is not `base`: paired bootstrap differences to (`base`, same condition) of the
    per-answer `vecs` on the items where both have a value, stored as `row["vs_base"][metric]` (with `against`
    naming the base row)."""
    from qihuang.evaluate.stats import paired_bootstrap_diff

    for (label, cond), row in rows.items():
        ref = rows.get((base, cond))
        if label == base or ref is None:
            continue
        row["vs_base"] = {"against": f"{base}:{cond}"}
        for m in PAIRED_METRICS:
            a, b = vecs[(base, cond)].get(m) or [], vecs[(label, cond)].get(m) or []
            if len(a) != len(b):
                continue
            pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
            if pairs:
                row["vs_base"][m] = paired_bootstrap_diff([x for x, _ in pairs], [y for _, y in pairs],
                                                          n_boot, seed)


def index_fingerprint(index: PassageIndex | None) -> str | None:
    """The index's passages file (path, size, mtime): part caches of retrieval rows depend on it."""
    if index is None or index.source is None:
        return None
    st = Path(index.source).stat()
    return f"{Path(index.source).resolve()}:{st.st_size}:{int(st.st_mtime)}"
