"""The eval stage's held-out-book QA rows: plan them once (QA set, index, hits, rows, MCQ models), run each model's
rows and the off-topic probe through the part cache, and add the paired differences once every model is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qihuang.decoding import DecodeParams
from qihuang.evaluate.conditions import (
    add_row_pairs,
    resolve_models,
    resolve_rows,
    ground_questions,
    run_offtopic,
    run_row,
    vectors,
)
from qihuang.evaluate.runner import HELDOUT_QA_FILE, Parts, progress_logger, safe_name
from qihuang.retrieval import SEARCH_VERSION, PassageIndex
from qihuang.runs import MetricsLog, sha256_file, write_jsonl

if TYPE_CHECKING:
    from qihuang.evaluate import EvalConfig
    from qihuang.rag import Grounding

ROWS_VERSION = 4
"""Bumped when the scoring of rows changes, so cached rows are recomputed."""


@dataclass
class Plan:
    """What the models of one stage share: the held-out-book QA set, the retrieval index and its hits, the QA rows
    to run and the models whose MCQ files are scored."""

    qa_items: list[dict[str, Any]] = field(default_factory=list)
    """The held-out-book QA set (empty: no rows run)."""
    qa_digest: str | None = None
    """sha256 of its file: the rows' cache key."""
    index: PassageIndex | None = None
    """The opened index (None: no retrieval rows)."""
    index_key: dict[str, Any] | None = None
    """What the index records about itself (`index_key`): the retrieval rows' cache key."""
    index_training_only: bool = False
    """The index was built from the run's training books only (corpus/train.jsonl, no library)."""
    grounds: list[Grounding] = field(default_factory=list)
    """Grounding (retrieved passages, answer opening or decline) of each QA item (empty without an index)."""
    offtopic_grounds: list[Grounding] = field(default_factory=list)
    """Grounding of each off-topic question."""
    rows: list[tuple[str, str]] = field(default_factory=list)
    """(label, condition) rows in table order."""
    mcq_labels: set[str] = field(default_factory=set)
    """Models whose MCQ files are scored."""
    bpc_labels: set[str] = field(default_factory=set)
    """Models whose held-out bits/char is scored."""


def pick_labels(specs: list[str], labels: list[str]) -> set[str]:
    """Labels named by `specs` (a label, `first`/`base`, `last`, or `*`)."""
    return {lb for s in specs for lb in resolve_models(s, labels)}


def index_key(index: PassageIndex) -> dict[str, Any]:
    """The index's format version, segmentation, passages-file sha256 and lexicon hash (`PassageIndex.meta`): a
    rebuilt or differently segmented index changes it, a merely touched passages file does not."""
    meta = index.meta or {}
    key = {k: meta.get(k) for k in ("version", "segmentation", "fingerprint", "lexicon")}
    if key["fingerprint"] is None and index.source is not None:  # an index built in memory
        key.update(segmentation=index.segmentation, fingerprint=sha256_file(Path(index.source)))
    return key


def make_plan(cfg: EvalConfig, labels: list[str], heldout: Path | None, index: Path | None, out_dir: Path,
              log: MetricsLog) -> Plan:
    """Build (or reuse) the held-out-book QA set, open the index and retrieve for every question when a retrieval
    row needs it, resolve rows."""
    from qihuang.evaluate.heldout_qa import cached_heldout_qa

    plan = Plan(mcq_labels=pick_labels(cfg.mcq_models, labels), bpc_labels=pick_labels(cfg.bpc_models, labels))
    if heldout is not None and cfg.heldout_qa_n:
        items, digest, reused = cached_heldout_qa(Path(heldout), cfg, out_dir / HELDOUT_QA_FILE,
                                                  out_dir / "parts" / "heldout_books_qa.json")
        types = sorted({it["task_type"] for it in items})
        log.log(event="heldout_books_qa", n=len(items), types=types, books=len({it["book"] for it in items}),
                reused=reused)
        if items:
            plan.qa_items, plan.qa_digest = items, digest
    rows = resolve_rows(cfg.qa_rows, labels)
    if any(c == "rag" for _, c in rows):
        if index is None:
            log.log(event="rows_skipped", reason="no retrieval index given", rows=[f"{a}:{c}" for a, c in rows
                                                                                   if c == "rag"])
            rows = [r for r in rows if r[1] != "rag"]
        else:
            from qihuang.retrieval import RUN_FILES

            plan.index = PassageIndex.open(index)
            plan.index_key = index_key(plan.index)
            plan.index_training_only = plan.index.source is not None and Path(plan.index.source).name == RUN_FILES[-1]
    plan.rows = rows if plan.qa_items else []
    if plan.index is not None and plan.rows:
        plan.grounds = ground_questions(plan.index, [it["question"] for it in plan.qa_items], cfg.passages_k,
                                        cfg.relevance_gate, cfg.cite_first)
        if cfg.offtopic:
            from qihuang.evaluate.offtopic import OFFTOPIC_QUESTIONS

            plan.offtopic_grounds = ground_questions(plan.index, OFFTOPIC_QUESTIONS, cfg.passages_k,
                                                     cfg.relevance_gate, cfg.cite_first)
    return plan


def model_rows(cfg: EvalConfig, label: str, plan: Plan, model: Callable[[], tuple[Any, Any]],
               defaults: dict[str, Any], parts: Parts, result: dict[str, Any], out_dir: Path,
               log: MetricsLog) -> dict[tuple[str, str], dict[str, Any]]:
    """Run (or reuse) this model's rows into result["rows"][condition] and the off-topic probe into
    result["offtopic"]; returns the per-answer vectors by (label, condition) for the paired differences."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    retrieval = {"index": plan.index_key, "k": cfg.passages_k, "chars": cfg.passage_chars, "search": SEARCH_VERSION,
                 "gate": cfg.relevance_gate, "cite_first": cfg.cite_first}
    for _, cond in [r for r in plan.rows if r[0] == label]:
        def compute(cond: str = cond) -> dict[str, Any]:
            summary, per = run_row(*model(), defaults, plan.qa_items, cond, plan.grounds if cond == "rag" else None,
                                   cfg, progress_logger(log, label, f"heldout_books:{cond}"))
            write_jsonl(out_dir / "predictions" / f"{safe_name(label)}__rows__{cond}.jsonl", per)
            log.log(event="qa_row", label=label, condition=cond, rouge_l=summary["rouge_l"],
                    citation_book=summary["citation_book"], degenerate=summary["degenerate"])
            return {"summary": summary, "vectors": vectors(per)}

        params = {"qa": plan.qa_digest, "condition": cond, "tokens": cfg.qa_max_new_tokens, "defaults": defaults,
                  "decoding": asdict(DecodeParams()), "v": ROWS_VERSION}
        if cond == "rag":
            params.update(retrieval)
        done = parts.get("rows", f"heldout_books__{cond}", params, compute)
        result["rows"][cond], out[(label, cond)] = done["summary"], done["vectors"]
    if cfg.offtopic and plan.index is not None and (label, "rag") in plan.rows:
        result["offtopic"] = parts.get("offtopic", "questions", {
            **retrieval, "tokens": cfg.qa_max_new_tokens, "defaults": defaults, "decoding": asdict(DecodeParams()),
            "v": ROWS_VERSION}, lambda: _offtopic(cfg, label, plan, model, defaults, out_dir, log))
    return out


def _offtopic(cfg: EvalConfig, label: str, plan: Plan, model: Callable[[], tuple[Any, Any]],
              defaults: dict[str, Any], out_dir: Path, log: MetricsLog) -> dict[str, Any]:
    from qihuang.evaluate.offtopic import OFFTOPIC_QUESTIONS

    summary, per = run_offtopic(*model(), defaults, OFFTOPIC_QUESTIONS, plan.offtopic_grounds, cfg)
    write_jsonl(out_dir / "predictions" / f"{safe_name(label)}__offtopic.jsonl", per)
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
