"""Side-by-side report across models: `results.json`, `report.md` (one row per model, with the files each figure
came from and skipped-row counts) and PNG charts (bpc bars, MCQ accuracy with 95% CI whiskers, QA scores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qihuang.runs import atomic_open, atomic_path, write_json


def pct(x: float | None) -> str:
    """A share as percent with one decimal (– for none)."""
    return "–" if x is None else f"{100 * x:.1f}"


def points(d: dict[str, float]) -> str:
    """A paired difference (`stats.paired_bootstrap_diff`) in signed percentage points."""
    return f"{100 * d['diff']:+.1f}"


def ci_points(d: dict[str, float]) -> str:
    """Its 95% interval in signed percentage points: `[lo, hi]`."""
    return f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def _rows_text(rows: list[int], limit: int = 20) -> str:
    if not rows:
        return ""
    shown = ", ".join(str(r) for r in rows[:limit])
    return f" (rows {shown}{', …' if len(rows) > limit else ''})"


def render_markdown(results: dict[str, Any], files: dict[str, Any], rows: list[list[str]] | None = None) -> str:
    """The Markdown report: main table, held-out-book QA rows (model x condition, per type, off-topic), MCQ
    variants, per-category breakdown, paired differences, sources."""
    from qihuang.evaluate.report_rows import rows_markdown

    labels = list(results)
    mcq_keys = list(dict.fromkeys(k for r in results.values() for k in r["mcq"]))
    qa_keys = list(dict.fromkeys(k for r in results.values() for k in r["qa"]))
    head = ["model", "bpc ↓"] + [f"{k} acc % [95% CI]" for k in mcq_keys]
    for k in qa_keys:
        head += [f"{k} ROUGE-L", f"{k} BLEU-4", f"{k} faithfulness"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        r = results[label]
        cells = [f"**{label}**", f"{r['bpc']['bpc']:.3f}" if r.get("bpc") else "–"]
        for k in mcq_keys:
            m = r["mcq"].get(k)
            cells.append(f"{pct(m['accuracy'])} [{pct(m['ci95'][0])}, {pct(m['ci95'][1])}]" if m else "–")
        for k in qa_keys:
            q = r["qa"].get(k)
            cells += ([pct(q["rouge_l"]), f"{q['bleu4']:.1f}", pct(q["faithfulness"])] if q else ["–"] * 3)
        lines.append("| " + " | ".join(cells) + " |")
    out = lines + [""]
    out += rows_markdown(results, rows or [], files)
    if mcq_keys:
        first = next(r["mcq"][k] for r in results.values() for k in mcq_keys if k in r["mcq"])
        out += [f"MCQ accuracy is `{first['metric']}` ({first['shots']}-shot, scoring `{first['scoring']}`"
                f"{', formulation `' + first['formulation'] + '`' if first.get('formulation') else ''}); "
                "bpc is bits per character of held-out text (tokenizer-independent); ROUGE-L, faithfulness in %, "
                "BLEU-4 corpus-level, all on characters; – where the eval's `bpc_models` / `mcq_models` leave a model "
                "out.", ""]
        out += ["### MCQ by scoring variant", "", "| model | file | n | chance % | " +
                " | ".join(sorted({v for r in results.values() for m in r["mcq"].values() for v in m["variants"]}))
                + " |"]
        variants = sorted({v for r in results.values() for m in r["mcq"].values() for v in m["variants"]})
        out.append("|" + "---|" * (4 + len(variants)))
        for label in labels:
            for k, m in results[label]["mcq"].items():
                out.append(f"| {label} | {k} | {m['n']} | {pct(m['chance'])} | " +
                           " | ".join(pct(m["variants"].get(v)) for v in variants) + " |")
        out.append("")
        cat_rows = [(label, k, m) for label in labels for k, m in results[label]["mcq"].items()
                    if len(m["by_category"]) > 1]
        if cat_rows:
            out += ["### MCQ by category", "", "| model | file | category | n | acc % |", "|---|---|---|---|---|"]
            for label, k, m in cat_rows:
                out += [f"| {label} | {k} | {c} | {v['n']} | {pct(v['accuracy'])} |"
                        for c, v in m["by_category"].items()]
            out.append("")
        diffs = [(label, k, key, m[key]) for label in labels for k, m in results[label]["mcq"].items()
                 for key in m if key.startswith("vs_")]
        if diffs:
            out += ["### MCQ difference to the first model (paired bootstrap, same items)", "",
                    "| model | file | Δ acc (points) | 95% CI | P(not better) |", "|---|---|---|---|---|"]
            out += [f"| {label} vs {key[3:]} | {k} | {points(d)} | {ci_points(d)} | {d['p_not_better']:.2f} |"
                    for label, k, key, d in diffs]
            out.append("")
    if qa_keys:
        out += ["### Open QA", "", "| model | file | n | ROUGE-L % | BLEU-4 | sentence BLEU-4 | answer chars | "
                "reference chars | faithfulness % | reference faithfulness % |", "|" + "---|" * 10]
        for label in labels:
            for k, q in results[label]["qa"].items():
                out.append(f"| {label} | {k} | {q['n']} | {pct(q['rouge_l'])} | {q['bleu4']:.1f} | "
                           f"{q['sentence_bleu4']:.1f} | {q['length']:.0f} | {q['reference_length']:.0f} | "
                           f"{pct(q['faithfulness'])} | {pct(q['reference_faithfulness'])} |")
        out.append("")
    out += ["### Sources", ""]
    for label in labels:
        r = results[label]
        out.append(f"- **{label}**: model `{r['model']}`")
        if r.get("bpc"):
            b = r["bpc"]
            out.append(f"  - bpc: `{b['file']}`, {b['chars']:,} characters ({b['passages']} passages, "
                       f"{len(b.get('by_book') or {})} books taking turns; {b['tokens_per_char']:.2f} tokens/char, "
                       f"window {b['window']}, stride {b['stride']} tokens)")
        for k, m in r["mcq"].items():
            out.append(f"  - {k}: `{m['file']}` ({m['format']}), {m['n']} questions scored (the first valid rows "
                       f"of {m['total_rows']}), {m['skipped']} rows skipped{_rows_text(m['skipped_rows'])}"
                       + (f": {m['skipped_reasons']}" if m["skipped"] else "")
                       + (f"; {m['unparsed']} generated answers without a letter" if "unparsed" in m else ""))
        for k, q in r["qa"].items():
            out.append(f"  - {k}: `{q['file']}` ({q['format']}), {q['n']} questions, {q['skipped']} records "
                       f"skipped{_rows_text(q['skipped_rows'])}, {q['n_with_source']} with a source passage")
    if files.get("heldout") is None and not any(r.get("bpc") for r in results.values()):
        out.append("- bpc: no held-out passages given")
    return "\n".join(out).rstrip() + "\n"


def write_charts(out_dir: Path, results: dict[str, Any]) -> list[str]:
    """bpc.png, mcq_accuracy.png (CI whiskers, chance line), qa.png; returns the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[str] = []
    labels = list(results)

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(name)

    bpc = [(lb, results[lb]["bpc"]["bpc"]) for lb in labels if results[lb].get("bpc")]
    if bpc:
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(bpc), 3.4))
        bars = ax.bar([b[0] for b in bpc], [b[1] for b in bpc], color="#4c72b0")
        ax.bar_label(bars, fmt="%.3f")
        ax.set_ylabel("bits per character (lower is better)")
        ax.set_title("Held-out bpc")
        save(fig, "bpc.png")
    mcq_keys = list(dict.fromkeys(k for r in results.values() for k in r["mcq"]))
    if mcq_keys:
        fig, ax = plt.subplots(figsize=(2.5 + 1.6 * len(mcq_keys) * max(1, len(labels)) / 2, 3.8))
        width = 0.8 / max(len(labels), 1)
        x = np.arange(len(mcq_keys))
        for i, lb in enumerate(labels):
            accs, err_lo, err_hi = [], [], []
            for k in mcq_keys:
                m = results[lb]["mcq"].get(k)
                a = m["accuracy"] if m else np.nan
                accs.append(100 * a)
                err_lo.append(100 * (a - m["ci95"][0]) if m else 0)
                err_hi.append(100 * (m["ci95"][1] - a) if m else 0)
            ax.bar(x + (i - (len(labels) - 1) / 2) * width, accs, width, yerr=[err_lo, err_hi], capsize=3, label=lb)
        for j, k in enumerate(mcq_keys):
            chance = next(r["mcq"][k]["chance"] for r in results.values() if k in r["mcq"])
            ax.hlines(100 * chance, j - 0.45, j + 0.45, colors="grey", linestyles="dashed")
        ax.set_xticks(x, ["/\n".join(k.split("/")[-2:]) for k in mcq_keys], fontsize=7)
        ax.set_ylabel("accuracy % (95% CI; dashed: chance)")
        ax.set_title("Multiple choice")
        ax.legend(fontsize=8)
        save(fig, "mcq_accuracy.png")
    qa_keys = list(dict.fromkeys(k for r in results.values() for k in r["qa"]))
    if qa_keys:
        fig, axes = plt.subplots(1, len(qa_keys), figsize=(3.2 * len(qa_keys) + 1, 3.4), squeeze=False)
        for ax, k in zip(axes[0], qa_keys):
            metrics = ["rouge_l", "faithfulness"]
            width = 0.8 / max(len(labels), 1)
            for i, lb in enumerate(labels):
                q = results[lb]["qa"].get(k) or {}
                vals = [100 * (q.get(m) or 0.0) for m in metrics]
                ax.bar(np.arange(2) + (i - (len(labels) - 1) / 2) * width, vals, width, label=lb)
            ax.set_xticks(np.arange(2), ["ROUGE-L", "faithfulness"])
            ax.set_title(k, fontsize=9)
            ax.set_ylabel("%")
        axes[0][0].legend(fontsize=8)
        save(fig, "qa.png")
    return written


def write_outputs(out_dir: Path, results: dict[str, Any], files: dict[str, Any], cfg: Any = None,
                  rows: list[list[str]] | None = None) -> dict[str, Any]:
    """results.json + report.md + charts into out_dir (`rows`: the held-out-book QA rows in table order)."""
    out_dir = Path(out_dir)
    charts = write_charts(out_dir, results)
    doc = {"models": results, "files": files, "charts": charts, "rows": rows or []}
    if cfg is not None:
        doc["config"] = cfg
    write_json(out_dir / "results.json", doc)
    md = render_markdown(results, files, rows)
    if charts:
        md += "\nCharts (in the eval folder): " + ", ".join(f"`{c}`" for c in charts) + "\n"
    with atomic_open(out_dir / "report.md") as fh:
        fh.write(md)
    return doc


def merge_results(paths: list[tuple[str | None, Path]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Combine earlier results.json files (label=None keeps the labels inside; a label renames a single model)."""
    models: dict[str, Any] = {}
    files: dict[str, Any] = {"sources": []}
    for label, path in paths:
        p = Path(path)
        if p.is_dir():
            p = p / "results.json"
        doc = json.loads(p.read_text(encoding="utf-8"))
        found = doc.get("models") or {}
        if label is not None:
            if len(found) != 1:
                raise ValueError(f"{p}: holds {len(found)} models; give no label to keep their own labels")
            found = {label: next(iter(found.values()))}
        for lb, r in found.items():
            if lb in models:
                raise ValueError(f"label {lb!r} appears twice (rename with LABEL=path)")
            models[lb] = r
        files["sources"].append(str(p))
    return models, files
