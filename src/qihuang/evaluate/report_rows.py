"""Markdown for the held-out-book QA rows: model x condition table with paired CIs to the base model, the
per-type table of the final model with retrieval, and the off-topic line."""

from __future__ import annotations

from typing import Any

from qihuang.evaluate.compare import ci_points, points
from qihuang.evaluate.compare import pct as _pct

CONDITION_NAMES = {"closed": "closed-book", "rag": "+ retrieval"}


def _diff(row: dict[str, Any], metric: str) -> str:
    d = (row.get("vs_base") or {}).get(metric)
    if not d:
        return ""
    return f" ({points(d)} {ci_points(d)})"


def _cells(r: dict[str, Any], with_ci: bool) -> list[str]:
    def ci(metric: str) -> str:
        return _diff(r, metric) if with_ci else ""

    return [str(r["n"]), _pct(r["rouge_l"]) + ci("rouge_l"), f"{r['bleu4']:.1f}",
            _pct(r["faithfulness"]) + ci("faithfulness"),
            f"{_pct(r['citation_book_attribution'])} / {_pct(r['citation_book'])}" + ci("citation_book"),
            f"{_pct(r['citation_section_attribution'])} / {_pct(r['citation_section'])}" + ci("citation_section"),
            _pct(r["degenerate"]) + ci("degenerate"),
            f"{_pct(r.get('model_rouge_l'))} / {_pct(r.get('model_faithfulness'))}" + ci("model_rouge_l"),
            _pct(r.get("model_degenerate")),
            f"{_pct(r.get('guard_cut'))} / {_pct(r.get('guard_unsupported'))} / {_pct(r.get('guard_fallback'))}",
            _pct(r.get("echo")) + ci("echo"), _pct(r["declined"]), f"{r['length']:.0f}"]


HEAD = ["n", "ROUGE-L %", "BLEU-4", "faithfulness %", "right book % (attribution / all)",
        "right section % (attribution / all)", "degenerate %", "model's own ROUGE-L / faithfulness %",
        "model's own degenerate %", "guard cut / of it unsupported / quoted %",
        "echo %", "declined %", "answer chars"]


def rows_markdown(results: dict[str, Any], rows: list[list[str]], files: dict[str, Any]) -> list[str]:
    """The section's lines (empty when no row ran); without `rows` (merged results) every model's rows in turn."""
    rows = rows or [[lb, c] for lb, r in results.items() for c in r.get("rows") or {}]
    rows = [r for r in rows if r[1] in (results.get(r[0], {}).get("rows") or {})]
    if not rows:
        return []
    against = [(r.get("vs_base") or {}).get("against") for r in (results[lb]["rows"][c] for lb, c in rows)]
    bases = list(dict.fromkeys(a.rpartition(":")[0] for a in against if a)) or [next(iter(results))]
    base = " / ".join(f"**{b}**" for b in bases)
    out = ["### Held-out-book QA: the system users get", "",
           "| model | condition | " + " | ".join(HEAD) + " | gold passage retrieved % |",
           "|" + "---|" * (len(HEAD) + 3)]
    for label, cond in rows:
        r = results[label]["rows"][cond]
        out.append(f"| **{label}** | {CONDITION_NAMES.get(cond, cond)} | " + " | ".join(_cells(r, True))
                   + f" | {_pct(r.get('gold_retrieved'))} |")
    first = results[rows[0][0]]["rows"][rows[0][1]]
    out += ["", f"Questions: {first['n']} from the corpus' held-out books (never trained on; "
            f"`{files.get('heldout_books_qa')}`), {first['n_attribution']} of them attribution (出处 / 篇名归属), "
            f"{first['n_with_source']} with a source passage. Retrieval: top passages from "
            f"`{files.get('index')}`. In brackets: difference to {base} in the same condition, in points, with "
            "its paired-bootstrap 95% CI (same questions). Right book / section: the answer cites the gold book "
            "(/ and chapter) as 《书名》, 《书名·篇名》 or a [n] mark resolving to a prompt passage; an answer that "
            "cites nothing counts wrong. Retrieval rows are the system: a question that names no book or section "
            "of the library, uses none of its terms and quotes none of it is declined without the model "
            "(`qihuang.relevance`), and an answer opens with the citation of the passage the question matches best. "
            "Degenerate: empty, looping (an n-gram repeated ≥ 3 times in a row, or one covering ≥ 40% of the "
            "answer) or noise (mostly punctuation, single characters strung on marks), in the answer users see; "
            "model's own: the same scores of what the model generated (after the citation opening; generation "
            "stops where the guard cuts, as a served stream does), before the "
            "answer guard cut it (guard cut %: where it turned degenerate or, unsupported %, at its first sentence "
            "whose character bigrams are less than half found in the question and the passages shown — for a small "
            "model, invented text) or, where nothing of its own was left, quoted the cited passage "
            "instead (quoted %) — the difference is what the guard, not the model, contributes. Echo: the answer's "
            "own words (its 《…》 titles left out) are ≥ 80% a "
            "repetition of the question, or there are none — a non-answer even where it scores ROUGE-L against "
            "references that quote the question. Declined: says the sources do not cover the question."
            + _index_note(files), ""]
    out += _type_table(results, rows)
    out += _offtopic_lines(results)
    return out


def _index_note(files: dict[str, Any]) -> str:
    if not files.get("index_training_only"):
        return ""
    return (" Note: the index holds the training books only, so a held-out book's passage is never retrieved and "
            "right-book citations with retrieval cannot score (build the corpus library to include all books).")


def _type_table(results: dict[str, Any], rows: list[list[str]]) -> list[str]:
    rag = [r for r in rows if r[1] == "rag"]
    label, cond = (rag or rows)[-1]
    by_type = results[label]["rows"][cond].get("by_type") or {}
    if not by_type:
        return []
    out = [f"### Held-out-book QA by question type: {label}, {CONDITION_NAMES.get(cond, cond)}", "",
           "| type | " + " | ".join(HEAD) + " |", "|" + "---|" * (len(HEAD) + 1)]
    for t, r in by_type.items():
        out.append(f"| {t} | " + " | ".join(_cells(r, False)) + " |")
    return out + [""]


def _offtopic_lines(results: dict[str, Any]) -> list[str]:
    found = [(lb, r["offtopic"]) for lb, r in results.items() if r.get("offtopic")]
    if not found:
        return []
    n = found[0][1]["n"]
    parts = [f"**{lb}** invented citations {_pct(o['invented_citation'])}%, declined {_pct(o['declined'])}%, "
             f"degenerate {_pct(o['degenerate'])}%" for lb, o in found]
    return [f"Off-topic ({n} questions about cars, tax, programming, sports … asked with retrieval): "
            + "; ".join(parts) + ".", ""]
