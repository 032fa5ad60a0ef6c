"""The eval stage's held-out-book QA rows: plan them once (QA set, index, rows, MCQ models), run each model's rows
and the off-topic probe through the part cache, and add the paired differences once every model is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qihuang.decoding import DecodeParams
from qihuang.evaluate.conditions import (
    add_row_pairs,
    index_fingerprint,
    resolve_rows,
    run_offtopic,
    run_row,
    vectors,
)
from qihuang.runs import MetricsLog, write_jsonl

if TYPE_CHECKING:
    from qihuang.evaluate import EvalConfig
    from qihuang.evaluate.runner import Plan, _Parts

ROWS_VERSION = 1
"""Bumped when the scoring of rows changes, so cached rows are recomputed."""


def pick_labels(specs: list[str], labels: list[str]) -> set[str]:
    """Labels named by `specs` (a label, `first`/`base`, `last`, or `*`)."""
    return {lb for lb, _ in resolve_rows([f"{s}:x" for s in specs], labels)}


def make_plan(cfg: EvalConfig, labels: list[str], heldout: Path | None, index: Path | None, out_dir: Path,
              log: MetricsLog) -> Plan:
    """Build (or reuse) the held-out-book QA set, open the index when a retrieval row needs it, resolve rows."""
    from qihuang.evaluate.heldout_qa import build_heldout_qa, load_lexicon, write_qa
    from qihuang.evaluate.runner import HELDOUT_QA_FILE, Plan

    plan = Plan(mcq_labels=pick_labels(cfg.mcq_models, labels))
    if heldout is not None and cfg.heldout_qa_n:
        items = build_heldout_qa(Path(heldout), cfg.heldout_qa_n, cfg.seed, load_lexicon(cfg.lexicon),
                                 cfg.heldout_qa_generators)
        types = sorted({it["task_type"] for it in items})
        log.log(event="heldout_books_qa", n=len(items), types=types, books=len({it["book"] for it in items}))
        if items:
            plan.qa_items, plan.qa_digest = items, write_qa(out_dir / HELDOUT_QA_FILE, items)
    rows = resolve_rows(cfg.qa_rows, labels)
    if any(c == "rag" for _, c in rows):
        if index is None:
            log.log(event="rows_skipped", reason="no retrieval index given", rows=[f"{a}:{c}" for a, c in rows
                                                                                   if c == "rag"])
            rows = [r for r in rows if r[1] != "rag"]
        else:
            from qihuang.retrieval import PassageIndex

            plan.index = PassageIndex.open(index)
    plan.rows = rows if plan.qa_items else []
    return plan


def model_rows(cfg: EvalConfig, label: str, plan: Plan, model: Callable[[], tuple[Any, Any]],
               defaults: dict[str, Any], parts: _Parts, result: dict[str, Any], out_dir: Path,
               log: MetricsLog) -> dict[tuple[str, str], dict[str, Any]]:
    """Run (or reuse) this model's rows into result["rows"][condition] and the off-topic probe into
    result["offtopic"]; returns the per-answer vectors by (label, condition) for the paired differences."""
    from qihuang.evaluate.runner import _progress, _safe

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for _, cond in [r for r in plan.rows if r[0] == label]:
        def compute(cond: str = cond) -> dict[str, Any]:
            summary, per = run_row(*model(), defaults, plan.qa_items, cond, plan.index if cond == "rag" else None,
                                   cfg, _progress(log, label, f"heldout_books:{cond}"))
            write_jsonl(out_dir / "predictions" / f"{_safe(label)}__rows__{cond}.jsonl", per)
            log.log(event="qa_row", label=label, condition=cond, rouge_l=summary["rouge_l"],
                    citation_book=summary["citation_book"], degenerate=summary["degenerate"])
            return {"summary": summary, "vectors": vectors(per)}

        params = {"qa": plan.qa_digest, "condition": cond, "tokens": cfg.qa_max_new_tokens, "defaults": defaults,
                  "decoding": asdict(DecodeParams()), "v": ROWS_VERSION}
        if cond == "rag":
            params.update({"index": index_fingerprint(plan.index), "k": cfg.passages_k, "chars": cfg.passage_chars})
        done = parts.get("rows", f"heldout_books__{cond}", params, compute)
        result["rows"][cond], out[(label, cond)] = done["summary"], done["vectors"]
    if cfg.offtopic and plan.index is not None and (label, "rag") in plan.rows:
        result["offtopic"] = parts.get("offtopic", "questions", {
            "index": index_fingerprint(plan.index), "k": cfg.passages_k, "chars": cfg.passage_chars,
            "tokens": cfg.qa_max_new_tokens, "defaults": defaults, "decoding": asdict(DecodeParams()), "v": ROWS_VERSION},
            lambda: _offtopic(cfg, label, plan, model, defaults, out_dir, log))
    return out


def _offtopic(cfg: EvalConfig, label: str, plan: Plan, model: Callable[[], tuple[Any, Any]],
              defaults: dict[str, Any], out_dir: Path, log: MetricsLog) -> dict[str, Any]:
    from qihuang.evaluate.offtopic import OFFTOPIC_QUESTIONS
    from qihuang.evaluate.runner import _safe

    summary, per = run_offtopic(*model(), defaults, OFFTOPIC_QUESTIONS, plan.index, cfg)
    write_jsonl(out_dir / "predictions" / f"{_safe(label)}__offtopic.jsonl", per)
    log.log(event="offtopic", label=label, invented_citation=summary["invented_citation"],
            declined=summary["declined"])
    return summary


def finish_rows(results: dict[str, Any], plan: Plan, vecs: dict[tuple[str, str], dict[str, Any]], base: str,
                cfg: EvalConfig) -> list[list[str]]:
    """Paired differences of every row to the base model's row of the same condition; returns the rows in table
    order as [label, condition]."""
    rows = {(lb, c): results[lb]["rows"][c] for lb, c in plan.rows if c in results[lb].get("rows", {})}
    add_row_pairs(rows, vecs, base, cfg.bootstrap, cfg.seed)
    return [[lb, c] for lb, c in rows]
