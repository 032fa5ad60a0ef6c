"""The served system on held-out-book QA: rows of model x condition (closed-book, or with retrieval through the
same prompt builder serving uses), batched answers, per-answer scores and row / per-type summaries, paired bootstrap
differences to the base model of the same condition, and the off-topic probe."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from qihuang.decoding import DecodeParams
from qihuang.evaluate.answers import ATTRIBUTION_TYPES, answer_flags, is_degenerate
from qihuang.retrieval import Hit, PassageIndex

if TYPE_CHECKING:
    from qihuang.rag import Grounding
    from qihuang.quotes import Quotable

CONDITIONS = ("closed", "rag")
"""closed: the question alone; rag: the top passages_k passages before it (`rag.rag_messages`)."""
PAIRED_METRICS = ("rouge_l", "faithfulness", "citation_book", "citation_section", "degenerate", "echo", "declined",
                  "model_rouge_l", "model_faithfulness")
"""Per-answer figures compared with the base row of the same condition (paired bootstrap)."""
ROW_FIGURES = ("rouge_l", "bleu4", "faithfulness", "length")
"""The figures of a row taken from `qa.summarize_scores` (the rest are the citation / degeneration checks)."""


def resolve_models(who: str, labels: Sequence[str]) -> list[str]:
    """Labels named by `who`: `*` every model, `first` / `base` the first (or the one labelled base), `last` the
    last, else the label itself when that model is evaluated."""
    if who == "*":
        return list(labels)
    if who == "first" or (who == "base" and "base" not in labels):
        return list(labels[:1])
    if who == "last":
        return list(labels[-1:])
    return [who] if who in labels else []


def resolve_rows(specs: Sequence[str], labels: Sequence[str]) -> list[tuple[str, str]]:
    """(label, condition) rows of `MODEL:CONDITION` specs in spec order, without repeats (MODEL as for
    `resolve_models`; a label of a model not evaluated is skipped)."""
    rows: list[tuple[str, str]] = []
    for spec in specs:
        who, _, cond = spec.rpartition(":")
        rows += [(lb, cond) for lb in resolve_models(who, labels) if (lb, cond) not in rows]
    return rows


def render(tokenizer: Any, defaults: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    """The served prompt (`serve.engine.render_prompt`); the bare user text for a tokenizer without a chat
    template."""
    from qihuang.serve.engine import render_prompt
    from qihuang.template import TemplateError

    try:
        return render_prompt(tokenizer, messages, defaults)
    except TemplateError:
        return str(messages[-1]["content"])


def ground_questions(index: PassageIndex | None, questions: Sequence[str], k: int, gate: bool = True,
                     cite_first: bool = True) -> list[Grounding]:
    """`rag.ground` for each question (it depends on the question only, so one list serves every model)."""
    from qihuang.rag import ground

    return [ground(index, q, k, gate, cite_first) for q in questions]


def render_prompts(tokenizer: Any, defaults: dict[str, Any], questions: Sequence[str], grounds: Sequence[Grounding],
                   passage_chars: int, verbatim: bool = True) -> tuple[list[str], list[Quotable] | None]:
    """Rendered prompts of `questions` with their groundings' passages before them (`rag.rag_messages`; no hits:
    closed-book) and the answers' openings after them, and what each answer's quotations may copy (`rag.quotable`;
    None with `verbatim` off) — the pair `rag.prepare_prompt` gives serving."""
    from qihuang.rag import quotable, rag_messages

    prompts = []
    for q, g in zip(questions, grounds, strict=True):
        msgs, _ = rag_messages([{"role": "user", "content": q}], [h.passage for h in g.hits], passage_chars)
        prompts.append(render(tokenizer, defaults, msgs) + g.prefix)
    quotes = [quotable([h.passage for h in g.hits], g.cited, q, passage_chars)
              for q, g in zip(questions, grounds, strict=True)] if verbatim else None
    return prompts, quotes


def build_prompts(tokenizer: Any, defaults: dict[str, Any], questions: Sequence[str], condition: str,
                  index: PassageIndex | None, k: int, passage_chars: int, gate: bool = True, cite_first: bool = True,
                  verbatim: bool = True) -> tuple[list[str], list[Grounding], list[Quotable] | None]:
    """Rendered prompts, the grounding of each (none closed-book) and what their quotations may copy:
    `ground_questions` + `render_prompts`."""
    from qihuang.rag import Grounding

    grounds = ground_questions(index, questions, k, gate, cite_first) if condition == "rag" else \
        [Grounding([]) for _ in questions]
    prompts, quotes = render_prompts(tokenizer, defaults, questions, grounds, passage_chars, verbatim)
    return prompts, grounds, quotes


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
             progress: Callable[[int, int], None] | None = None, decode: DecodeParams | None = None,
             grounds: Sequence[Grounding] | None = None,
             quotes: Sequence[Quotable | None] | None = None,
             until: Sequence[Callable[[str], bool] | None] | None = None, batch_tokens: int = 0) -> list[str]:
    """Stripped answers in input order through `qihuang.decoding.generate_batch` (continuous batching within
    `batch_size` rows and `batch_tokens` KV positions; progress
    as answers finish); with `grounds`, a grounding's whole answer is taken as it is (nothing
    generated) and its opening is put before what the model writes — the answer serving would send. `quotes[i]`:
    what its quotations may copy verbatim (`render_prompts`); `until[i]`: where answer i stops (`guard_stops`)."""
    from qihuang.decoding import generate_batch

    grounds = list(grounds) if grounds is not None else [None] * len(prompts)
    todo = [i for i, g in enumerate(grounds) if g is None or g.answer is None]
    outs = generate_batch(model, tokenizer, [prompts[i] for i in todo], max_new_tokens, batch_size=batch_size,
                          params=decode, progress=progress,
                          quotes=[quotes[i] for i in todo] if quotes is not None else None,
                          until=[until[i] for i in todo] if until is not None else None,
                          batch_tokens=batch_tokens) if todo else []
    answers = [g.answer if g is not None and g.answer is not None else "" for g in grounds]
    for i, text in zip(todo, outs, strict=True):
        g = grounds[i]
        answers[i] = (g.prefix if g is not None else "") + text
    return [a.strip() for a in answers]


def guard_stops(questions: Sequence[str], grounds: Sequence[Grounding], min_support: float
                ) -> list[Callable[[str], bool]]:
    """Per question, where its generation stops: where the answer guard would cut it (`answer_guard.stop_when`),
    as a served stream stops there — nothing after the cut is decoded only to be thrown away."""
    from qihuang.answer_guard import Support, stop_when

    return [stop_when(g.prefix, Support.of(q, [h.passage for h in g.hits], min_support))
            for q, g in zip(questions, grounds, strict=True)]


def guard_answers(answers: Sequence[str], questions: Sequence[str], grounds: Sequence[Grounding],
                  min_support: float = 0.0) -> tuple[list[str], list[dict[str, bool]]]:
    """The answers users see (`answer_guard.guard_answer`: degenerate continuations and, with `min_support`,
    sentences the passages shown do not support cut; answers with nothing of their own quoting the cited passage)
    and what the guard did to each (`guard_cut`, `guard_unsupported`, `guard_fallback`); a grounding's whole answer
    (a decline) is left as it is."""
    from qihuang.answer_guard import Support, guard_answer

    shown, acts = [], []
    for a, q, g in zip(answers, questions, grounds, strict=True):
        if g.answer is not None:
            shown.append(a)
            acts.append({"guard_cut": False, "guard_unsupported": False, "guard_fallback": False})
            continue
        out = guard_answer(a, q, g.cited, g.prefix, Support.of(q, [h.passage for h in g.hits], min_support))
        shown.append(out.text)
        acts.append({"guard_cut": out.cut, "guard_unsupported": out.unsupported, "guard_fallback": out.fallback})
    return shown, acts


def _hit_record(h: Hit) -> dict[str, Any]:
    return {"id": h.passage.id, "book": h.passage.book, "section": h.passage.section, "score": round(h.score, 4)}


def score_items(items: Sequence[dict[str, Any]], answers: Sequence[str],
                hits: Sequence[list[Hit]]) -> list[dict[str, Any]]:
    """Prediction records: question, type, answer, hits, the open-QA scores (`qa.score_each`: rouge_l, bleu4,
    length, faithfulness) and the citation / degeneration / declining flags (`answers.answer_flags`)."""
    from qihuang.evaluate.qa import QAItem, score_each

    scored = score_each([QAItem(it["question"], it["reference"], it.get("source") or None, i)
                         for i, it in enumerate(items)], answers)
    per = []
    for item, answer, found, s in zip(items, answers, hits, scored, strict=True):
        rec: dict[str, Any] = {"question": item["question"], "task_type": item.get("task_type", ""),
                               "book": item.get("book", ""), "section": item.get("section", ""),
                               "passage_id": item.get("passage_id", ""), "answer": answer,
                               "reference": item["reference"], "hits": [_hit_record(h) for h in found],
                               "gold_retrieved": any(h.passage.id == item.get("passage_id") for h in found)}
        rec.update({k: v for k, v in s.items() if k not in ("row", "answer")})
        rec.update(answer_flags(answer, item, [h.passage for h in found]))
        per.append(rec)
    return per


def score_item(item: dict[str, Any], answer: str, hits: list[Hit]) -> dict[str, Any]:
    """One prediction record (`score_items` of one)."""
    return score_items([item], [answer], [hits])[0]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(per: list[dict[str, Any]]) -> dict[str, Any]:
    """Row figures: ROUGE-L, corpus BLEU-4, faithfulness and length (`qa.summarize_scores`), citation right book /
    section (over attribution questions and over all with a source; an answer citing nothing counts wrong),
    degenerate %, echo % (answers that only repeat the question), declined %, and how often the gold passage was
    among the hits."""
    from qihuang.evaluate.qa import summarize_scores

    base = summarize_scores(per, [p["reference"] for p in per]) if per else \
        {"rouge_l": 0.0, "bleu4": 0.0, "faithfulness": None, "length": 0.0}
    src = [p for p in per if "right_book" in p]
    attr = [p for p in src if p["task_type"] in ATTRIBUTION_TYPES]
    return {
        "n": len(per), "n_with_source": len(src), "n_attribution": len(attr),
        "rouge_l": base["rouge_l"], "bleu4": base["bleu4"], "faithfulness": base["faithfulness"],
        "citation_book": _mean([float(p["right_book"]) for p in src]),
        "citation_section": _mean([float(p["right_section"]) for p in src]),
        "citation_book_attribution": _mean([float(p["right_book"]) for p in attr]),
        "citation_section_attribution": _mean([float(p["right_section"]) for p in attr]),
        "cites_any": _mean([float(bool(p["cited"])) for p in per]),
        "degenerate": _mean([float(p["degenerate"]) for p in per]) or 0.0,
        "echo": _mean([float(p["echo"]) for p in per]) or 0.0,
        "declined": _mean([float(p["declined"]) for p in per]) or 0.0,
        "length": float(base["length"]),
        "gold_retrieved": _mean([float(p["gold_retrieved"]) for p in per if p["hits"]]),
        "model_degenerate": _mean([float(p["model_degenerate"]) for p in per if "model_degenerate" in p]),
        "model_rouge_l": _mean([float(p["model_rouge_l"]) for p in per if "model_rouge_l" in p]),
        "model_faithfulness": _mean([float(p["model_faithfulness"]) for p in per
                                     if p.get("model_faithfulness") is not None]),
        "guard_cut": _mean([float(p["guard_cut"]) for p in per if "guard_cut" in p]),
        "guard_fallback": _mean([float(p["guard_fallback"]) for p in per if "guard_fallback" in p]),
        "guard_unsupported": _mean([float(p["guard_unsupported"]) for p in per if "guard_unsupported" in p]),
    }


def vectors(per: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per-answer values of PAIRED_METRICS (None where a metric does not apply), aligned with the QA set."""
    names = {"citation_book": "right_book", "citation_section": "right_section"}
    return {m: [None if p.get(names.get(m, m)) is None else float(p[names.get(m, m)]) for p in per]
            for m in PAIRED_METRICS}


def run_row(model: Any, tokenizer: Any, defaults: dict[str, Any], items: list[dict[str, Any]], condition: str,
            grounds: Sequence[Grounding] | None, cfg: Any,
            progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer every item under `condition` (with retrieval: its grounding, one per item) and score it: (summary
    with `by_type`, predictions)."""
    from qihuang.rag import Grounding

    t0 = time.time()
    found = list(grounds) if condition == "rag" and grounds is not None else [Grounding([]) for _ in items]
    questions = [it["question"] for it in items]
    prompts, quotes = render_prompts(tokenizer, defaults, questions, found, cfg.passage_chars, cfg.verbatim_quotes)
    answers = generate(model, tokenizer, prompts, cfg.qa_max_new_tokens, cfg.qa_batch_size, progress, grounds=found,
                       quotes=quotes,
                       until=guard_stops(questions, found, cfg.answer_support) if cfg.answer_guard else None,
                       batch_tokens=cfg.qa_batch_tokens)
    shown, acts = guard_answers(answers, questions, found, cfg.answer_support) if cfg.answer_guard else (answers, [{}] * len(items))
    per = score_items(items, shown, [g.hits for g in found])
    own = score_items(items, answers, [g.hits for g in found]) if cfg.answer_guard else per
    for p, g, raw, mine, act in zip(per, found, answers, own, acts, strict=True):
        p.update(opening=g.prefix, gate=g.reason, model_answer=raw, model_degenerate=is_degenerate(raw),
                 model_rouge_l=mine["rouge_l"], model_faithfulness=mine.get("faithfulness"), **act)
    summary = aggregate(per)
    types = sorted({p["task_type"] for p in per})
    summary["by_type"] = {t: aggregate([p for p in per if p["task_type"] == t]) for t in types}
    summary.update({"condition": condition, "seconds": round(time.time() - t0, 2),
                    "questions_per_s": round(len(items) / max(time.time() - t0, 1e-9), 3)})
    return summary, per


def run_offtopic(model: Any, tokenizer: Any, defaults: dict[str, Any], questions: Sequence[str],
                 grounds: Sequence[Grounding], cfg: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Off-topic questions with retrieval (their groundings, one per question): share of answers citing any book
    (invented citations), declining, degenerate."""
    prompts, quotes = render_prompts(tokenizer, defaults, questions, grounds, cfg.passage_chars, cfg.verbatim_quotes)
    answers = generate(model, tokenizer, prompts, cfg.qa_max_new_tokens, cfg.qa_batch_size, grounds=grounds,
                       quotes=quotes,
                       until=guard_stops(questions, grounds, cfg.answer_support) if cfg.answer_guard else None,
                       batch_tokens=cfg.qa_batch_tokens)
    if cfg.answer_guard:
        answers = guard_answers(answers, questions, grounds, cfg.answer_support)[0]
    per = []
    for q, a, g in zip(questions, answers, grounds, strict=True):
        flags = answer_flags(a, {}, [x.passage for x in g.hits])
        per.append({"question": q, "answer": a, "hits": [_hit_record(x) for x in g.hits], "cited": flags["cited"],
                    "declined": flags["declined"], "degenerate": flags["degenerate"], "gate": g.reason})
    n = len(per)
    return {"n": n, "invented_citation": sum(bool(p["cited"]) for p in per) / n,
            "declined": sum(p["declined"] for p in per) / n, "degenerate": sum(p["degenerate"] for p in per) / n,
            "with_hits": sum(bool(p["hits"]) for p in per) / n}, per


def add_row_pairs(rows: dict[tuple[str, str], dict[str, Any]], vecs: dict[tuple[str, str], dict[str, Any]],
                  base: str, n_boot: int, seed: int) -> None:
    """For every row whose model is not `base`: paired bootstrap differences (`stats.paired_diff`) to (`base`,
    same condition) of the per-answer `vecs`, stored as `row["vs_base"][metric]` (with `against` naming the base
    row)."""
    from qihuang.evaluate.stats import paired_diff

    for (label, cond), row in rows.items():
        if label == base or (base, cond) not in rows:
            continue
        row["vs_base"] = {"against": f"{base}:{cond}"}
        for m in PAIRED_METRICS:
            d = paired_diff(vecs[(base, cond)].get(m) or [], vecs[(label, cond)].get(m) or [], n_boot, seed)
            if d is not None:
                row["vs_base"][m] = d
