"""The data card: `card.json` (all numbers + every input file's fate), `card.md` (readable), `card.png` (chart:
characters and passages per category and dynasty; ASCII labels, so no CJK font is needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qihuang.runs import atomic_open, atomic_path, write_json

CATEGORY_EN = {
    "医经": "Classics", "伤寒金匮": "Cold damage", "诊法": "Diagnosis", "本草": "Materia medica",
    "方书": "Formularies", "温病": "Warm disease", "针灸推拿": "Acupuncture", "临证各科": "Clinical",
    "医案医话": "Case records", "养生": "Nourishing life", "综合": "General",
}
DYNASTY_EN = {
    "先秦": "Pre-Qin", "秦": "Qin", "汉": "Han", "西汉": "W. Han", "东汉": "E. Han", "三国": "Three Kingdoms",
    "晋": "Jin", "西晋": "W. Jin", "东晋": "E. Jin", "南北朝": "N&S Dyn.", "隋": "Sui", "唐": "Tang",
    "五代": "Five Dyn.", "宋": "Song", "北宋": "N. Song", "南宋": "S. Song", "金": "Jin (Jurchen)", "元": "Yuan",
    "明": "Ming", "清": "Qing", "民国": "Republic", "日本": "Japan", "朝鲜": "Korea", "?": "unknown",
    "魏晋": "Wei-Jin", "南齐": "S. Qi", "南朝": "S. Dyn.", "元末明初": "Yuan-Ming", "元明": "Yuan-Ming",
    "金元": "Jin-Yuan", "金元间": "Jin-Yuan", "明末清初": "Ming-Qing", "民国初年": "Republic", "西汉末": "W. Han",
    "初刊于宋": "Song", "天历元年": "Yuan (1328)",
}


def _label(name: str, table: dict[str, str]) -> str:
    if name in table:
        return table[name]
    return name if name.isascii() else f"other ({len(name)} chars)"


def _chart(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = summary["per_category"]
    dyns = dict(list(summary["per_dynasty"].items())[:14])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, data, table, title in ((axes[0], cats, CATEGORY_EN, "by category"),
                                   (axes[1], dyns, DYNASTY_EN, "by dynasty (top 14)")):
        names = list(data)
        labels = [_label(n, table) for n in names]
        chars = [data[n].get("chars", 0) / 1e6 for n in names]
        passages = [data[n].get("passages", 0) / 1e3 for n in names]
        y = range(len(names))
        ax.barh([i - 0.2 for i in y], chars, height=0.4, label="characters (M)")
        ax.barh([i + 0.2 for i in y], passages, height=0.4, label="passages (k)")
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_title(f"Kept passages {title}")
        ax.legend(loc="lower right")
    fig.suptitle(f"qihuang corpus: {summary['books_ingested']} books, "
                 f"{summary['train_passages'] + summary['heldout_passages']} passages, "
                 f"{summary['duplicates_removed']} duplicates removed")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _table(rows: list[list[Any]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any], files: list[dict[str, Any]]) -> str:
    """card.md text."""
    s = summary
    out = [
        "# Corpus card",
        "",
        f"Source: `{s['source']}` — {s['books_seen']} input files: **{s['books_ingested']} ingested**, "
        f"{s['books_rejected']} rejected, {s['books_skipped']} not selected (max_books).",
        "",
        f"- train: {s['train_passages']} passages, {s['train_chars']} characters",
        f"- held-out: {s['heldout_passages']} passages, {s['heldout_chars']} characters — "
        f"{', '.join(s['heldout_books']) or '(none)'}"
        + (f" (not found: {', '.join(s['heldout_missing'])})" if s["heldout_missing"] else ""),
        f"- cleaned characters: {s['cleaned_chars']}; replacement characters (undecodable bytes): "
        f"{s['replacement_chars']}",
        f"- duplicates removed: {s['duplicates_removed']} (exact {s['exact_duplicates']}, near "
        f"{s['near_duplicates']}; {s['train_duplicates_of_heldout']} training passages dropped as copies of "
        f"held-out text); passages rejected in all: {s['passages_rejected']}",
        f"- left in passage bodies: `\\x` {s['body_leaks'].get('backslash_x', 0)}, `<篇名>` "
        f"{s['body_leaks'].get('pianming_tag', 0)}, `<目录>` {s['body_leaks'].get('mulu_tag', 0)}",
        f"- build time: {s['seconds']} s",
        "",
        "![chart](card.png)",
        "",
        "## Per category",
        "",
        _table([[k, v.get("books", 0), v.get("passages", 0), v.get("chars", 0)] for k, v in s["per_category"].items()],
               ["category", "books", "passages", "chars"]),
        "",
        "## Per dynasty",
        "",
        _table([[k, v.get("books", 0), v.get("passages", 0), v.get("chars", 0)] for k, v in s["per_dynasty"].items()],
               ["dynasty", "books", "passages", "chars"]),
        "",
        "## Rejects by reason",
        "",
        _table([[k, n, "; ".join(e["text"][:60] for e in s["reject_examples"].get(k, []))]
                for k, n in s["rejects_by_reason"].items()], ["reason", "passages", "examples"]),
        "",
        "## Cross-book overlap, text level (sampled 8-character shingles already present in an earlier book)",
        "",
        _table([[o["book"], o["twin_book"], o["chars"], f"{o['share_of_book']:.1%}", f"{o['share_of_twin']:.1%}"]
                for o in s.get("text_overlap", [])], ["book", "earlier book", "~chars", "of book", "of earlier"]),
        "",
        "## Cross-book overlap, passage level (duplicate passages removed in favour of an earlier book)",
        "",
        _table([[o["book"], o["twin_book"], o["chars"], f"{o['share_of_book']:.1%}", f"{o['share_of_twin']:.1%}"]
                for o in s["cross_book_overlap"]], ["book", "twin (kept)", "chars", "of book", "of twin"]),
        "",
        "## Parsing and normalisation",
        "",
        _table([[k, v] for k, v in s["parse"].items() if k != "wrap_width"], ["count", "value"]),
        "",
        "## Replacement characters",
        "",
        _table([[r["file"], ", ".join(map(str, r["byte_offsets"]))] for r in s["replacements"]],
               ["file", "byte offsets"]),
        "",
        "## Every input file",
        "",
        _table([[f["file"], f["status"], f.get("category", ""), f.get("dynasty", ""), f.get("passages", ""),
                 f.get("duplicates", ""), f.get("reason", "") or ("held-out" if f.get("heldout") else "")]
                for f in sorted(files, key=lambda r: r["file"])],
               ["file", "status", "category", "dynasty", "passages", "duplicates", "reason / split"]),
        "",
    ]
    return "\n".join(out)


def write_card(path: Path, summary: dict[str, Any], files: list[dict[str, Any]]) -> None:
    """Write card.json, card.md and card.png into `path`."""
    write_json(path / "card.json", {**summary, "files": sorted(files, key=lambda r: r["file"])})
    with atomic_open(path / "card.md") as fh:
        fh.write(render_markdown(summary, files))
    _chart(path / "card.png", summary)
