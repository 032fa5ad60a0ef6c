"""Data card of the instruct stage (like HuangDI's 中医古籍指令数据种类概览): counts by task type, category, book,
dynasty, turns per dialogue, grounding histogram, rejects by reason with examples; card.md / card.json / card.png."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qihuang.runs import atomic_open, atomic_path, read_jsonl, write_json

BINS = [i / 10 for i in range(11)]
ASCII_LABELS = {
    "篇名归属": "section->book", "出处": "attribution", "条文原文": "clause text", "条文定位": "clause number",
    "原文填空": "cloze", "方剂组成": "formula composition", "方剂煎服": "formula preparation",
    "方证主治": "formula indication", "药物性味": "herb nature", "药物主治": "herb indication",
    "名词概念": "term definition", "术语语境": "term usage", "原文释义": "explanation", "病机证候": "pathogenesis",
    "治法": "treatment", "比较辨析": "comparison", "追问": "follow-up", "通用指令": "general",
    "本草方书": "materia medica & formulas", "综合医书": "comprehensive", "临证各科": "clinical specialties",
    "医经理论": "canon & theory", "针灸推拿": "acupuncture & tuina", "伤寒金匮": "Shanghan & Jingui",
    "温病": "warm disease", "医案医话": "cases & essays", "养生": "health cultivation", "诊法": "diagnostics",
}
"""English chart labels, used when no CJK font is installed (the markdown card keeps the Chinese names)."""


def _hist(values: list[float]) -> list[int]:
    counts = [0] * 10
    for v in values:
        counts[min(9, max(0, int(v * 10)))] += 1
    return counts


def card_stats(train: Iterable[dict[str, Any]], heldout: Iterable[dict[str, Any]], rejects: Iterable[dict[str, Any]],
               extra: dict[str, Any] | None = None, examples_per_reason: int = 2) -> dict[str, Any]:
    """The card's numbers from the written files' records."""
    by_type: Counter[str] = Counter()
    by_cat: Counter[str] = Counter()
    by_book: Counter[str] = Counter()
    by_dyn: Counter[str] = Counter()
    turns: Counter[int] = Counter()
    by_gen: Counter[str] = Counter()
    grounding: list[float] = []
    dialogues = general = pairs = 0
    for rec in train:
        meta = rec.get("meta", {})
        if meta.get("source") == "general":
            general += 1
            continue
        dialogues += 1
        turns[int(meta.get("turns", 1))] += 1
        for pm in meta.get("pairs") or [meta]:
            pairs += 1
            by_type[pm.get("task_type", "?")] += 1
            by_cat[pm.get("category") or "?"] += 1
            by_book[pm.get("book") or "?"] += 1
            by_dyn[pm.get("dynasty") or "?"] += 1
            by_gen[pm.get("generator") or "?"] += 1
            if pm.get("grounding") is not None:
                grounding.append(float(pm["grounding"]))
    held = list(heldout)
    rej_reason: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for r in rejects:
        reason = r.get("reason", "?")
        rej_reason[reason] += 1
        ex = examples.setdefault(reason, [])
        if len(ex) < examples_per_reason:
            ex.append({k: (str(r.get(k))[:160] if r.get(k) is not None else None)
                       for k in ("question", "answer", "raw", "passage_id", "book", "error") if k in r})
    return {
        "dialogues": dialogues, "pairs_in_train": pairs, "general_records": general, "heldout_qa": len(held),
        "heldout_passages": len({(h.get("meta") or {}).get("passage_id") for h in held}),
        "by_task_type": dict(by_type.most_common()), "by_category": dict(by_cat.most_common()),
        "by_book": dict(by_book.most_common()), "by_dynasty": dict(by_dyn.most_common()),
        "by_generator": dict(by_gen.most_common()), "turns_per_dialogue": {str(k): v for k, v in sorted(turns.items())},
        "grounding_hist": {"bins": BINS, "counts": _hist(grounding)},
        "grounding_mean": round(sum(grounding) / len(grounding), 4) if grounding else None,
        "rejects": sum(rej_reason.values()), "rejects_by_reason": dict(rej_reason.most_common()),
        "reject_examples": examples, **(extra or {}),
    }


def _table(title: str, counts: dict[str, int], limit: int = 30) -> list[str]:
    total = sum(counts.values()) or 1
    lines = [f"### {title}", "", "| | count | share |", "|---|---:|---:|"]
    for k, v in list(counts.items())[:limit]:
        lines.append(f"| {k} | {v:,} | {v / total:.1%} |")
    if len(counts) > limit:
        lines.append(f"| … {len(counts) - limit} more | | |")
    return lines + [""]


def render_md(s: dict[str, Any]) -> str:
    lines = ["# 中医古籍指令数据种类概览 — instruction data card", "",
             f"- dialogues: **{s['dialogues']:,}** ({s['pairs_in_train']:,} question–answer pairs); "
             f"general instructions mixed in: {s['general_records']:,}",
             f"- held-out QA (by passage): {s['heldout_qa']:,} pairs from {s['heldout_passages']:,} passages",
             f"- rejects: {s['rejects']:,}; mean grounding of kept pairs: {s['grounding_mean']}", ""]
    for key, title in (("by_task_type", "By task type"), ("by_category", "By category"), ("by_book", "By book"),
                       ("by_dynasty", "By dynasty"), ("by_generator", "By generator"),
                       ("turns_per_dialogue", "Turns per dialogue"), ("rejects_by_reason", "Rejects by reason")):
        lines += _table(title, s[key])
    h = s["grounding_hist"]
    lines += ["### Grounding score histogram", "", "| bin | count |", "|---|---:|"]
    lines += [f"| {h['bins'][i]:.1f}–{h['bins'][i + 1]:.1f} | {c:,} |" for i, c in enumerate(h["counts"])] + [""]
    lines += ["### Reject examples", ""]
    for reason, exs in s["reject_examples"].items():
        for ex in exs:
            text = "; ".join(f"{k}: {v}" for k, v in ex.items() if v)
            lines.append(f"- **{reason}** — {text}")
    return "\n".join(lines) + "\n"


def render_png(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    cjk = [f.name for f in font_manager.fontManager.ttflist
           if any(k in f.name for k in ("Noto Sans CJK", "WenQuanYi", "SimHei", "Source Han", "AR PL"))]
    if cjk:
        plt.rcParams["font.sans-serif"] = [cjk[0]]

    def label(k: str) -> str:
        if cjk:
            return k
        if k in ASCII_LABELS:
            return ASCII_LABELS[k]
        if k.startswith("balance:"):
            return k
        return k if k.isascii() else k.encode("ascii", "replace").decode()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    fig.subplots_adjust(left=0.17, right=0.98, top=0.92, bottom=0.06, wspace=0.55, hspace=0.3)
    panels = (("by_task_type", "task type"), ("by_category", "category"), ("rejects_by_reason", "rejects"))
    for ax, (key, title) in zip((axes[0][0], axes[0][1], axes[1][1]), panels):
        items = list(s[key].items())[:15][::-1]
        ax.barh([label(k)[:28] for k, _ in items], [v for _, v in items], color="#7a5c3e")
        ax.set_title(title)
        ax.tick_params(labelsize=8)
    h = s["grounding_hist"]
    axes[1][0].bar([b + 0.05 for b in h["bins"][:-1]], h["counts"], width=0.09, color="#3e6b7a")
    axes[1][0].set_title("grounding score of kept pairs")
    fig.suptitle(f"instruction data: {s['dialogues']:,} dialogues, {s['pairs_in_train']:,} pairs")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=72)
    plt.close(fig)


def write_card(out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read train/heldout/rejects in `out_dir` and write card.md, card.json, card.png; returns the stats."""
    out_dir = Path(out_dir)

    def rd(name: str) -> Iterable[dict[str, Any]]:
        p = out_dir / name
        return read_jsonl(p) if p.exists() else iter(())

    stats = card_stats(rd("train.jsonl"), rd("heldout_qa.jsonl"), rd("rejects.jsonl"), extra)
    write_json(out_dir / "card.json", stats)
    with atomic_open(out_dir / "card.md") as fh:
        fh.write(render_md(stats))
    render_png(stats, out_dir / "card.png")
    return stats
