"""Two answer files of the same questions side by side (`qihuang eval paired A B`): paired bootstrap differences
of every per-answer metric, overall and by question type — how an ablation is read against the run it varies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from qihuang.config import ConfigError
from qihuang.evaluate.compare import ci_points, pct, points
from qihuang.evaluate.conditions import PAIRED_METRICS, vectors
from qihuang.evaluate.stats import paired_diff
from qihuang.runs import read_jsonl_lines

REQUIRED = ("question", "task_type", "rouge_l")
"""Fields every line of a predictions file must have (what `qihuang eval compare` writes per answer)."""
BY_TYPE = ("rouge_l", "faithfulness")
"""Metrics broken down by question type."""


def load_predictions(path: Path) -> list[dict[str, Any]]:
    """One eval row's answers (`<out>/predictions/<label>__rows__<condition>.jsonl`); a line that is not a JSON
    object with REQUIRED fields is an error naming the file and line (`runs.read_jsonl_lines`)."""
    rows: list[dict[str, Any]] = []
    try:
        for n, row in read_jsonl_lines(path, ConfigError):
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise ConfigError(f"{path}:{n}: missing {', '.join(missing)} (not an eval predictions file?)")
            rows.append(row)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read predictions ({e})") from e
    if not rows:
        raise ConfigError(f"{path}: no answers")
    return rows


def check_aligned(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], a_name: str, b_name: str) -> None:
    """Both files answer the same questions in the same order, else an error naming the first line that differs."""
    if len(a) != len(b):
        raise ConfigError(f"{a_name} has {len(a)} answers and {b_name} {len(b)}: not the same questions")
    for i, (x, y) in enumerate(zip(a, b, strict=True), 1):
        if x["question"] != y["question"]:
            raise ConfigError(f"answer {i} differs: {a_name} asks {x['question'][:40]!r}, "
                              f"{b_name} {y['question'][:40]!r}: not the same questions")


def _compare(a: list[dict[str, Any]], b: list[dict[str, Any]], metrics: Sequence[str], n_boot: int,
             seed: int) -> dict[str, dict[str, float]]:
    va, vb = vectors(a), vectors(b)
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        d = paired_diff(va[m], vb[m], n_boot, seed)
        both = [(x, y) for x, y in zip(va[m], vb[m], strict=True) if x is not None and y is not None]
        if d is None or not both:
            continue
        out[m] = {"a": fmean(x for x, _ in both), "b": fmean(y for _, y in both), "n": len(both), **d}
    return out


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """B − A on the same answers: every PAIRED_METRICS figure (means of A and B over the answers where both have
    it, the difference, its paired 95% bootstrap interval), the same for BY_TYPE per question type, and how many
    answers the answer guard replaced by its quotation in each."""
    types = sorted({r["task_type"] for r in a}, key=lambda t: (-sum(r["task_type"] == t for r in a), t))
    by_type = {}
    for t in types:
        keep = [i for i, r in enumerate(a) if r["task_type"] == t]
        by_type[t] = {"n": len(keep), **_compare([a[i] for i in keep], [b[i] for i in keep], BY_TYPE, n_boot, seed)}
    fallbacks = [sum(bool(r.get("guard_fallback")) for r in rows) for rows in (a, b)]
    return {"n": len(a), "overall": _compare(a, b, PAIRED_METRICS, n_boot, seed), "by_type": by_type,
            "guard_fallback": {"a": fallbacks[0], "b": fallbacks[1]}}


def _cell(d: dict[str, float] | None) -> str:
    return "–" if not d else f"{points(d)} {ci_points(d)}"


def markdown(result: dict[str, Any], a_label: str, b_label: str) -> str:
    """The comparison as two Markdown tables (metrics, then question types)."""
    lines = [f"{result['n']} answers, {b_label} − {a_label} (paired bootstrap, 95% interval, points)", "",
             f"| metric | {a_label} | {b_label} | {b_label} − {a_label} |", "|---|---|---|---|"]
    for m, d in result["overall"].items():
        lines.append(f"| {m} | {pct(d['a'])} | {pct(d['b'])} | {_cell(d)} |")
    lines += ["", "| question type | n | " + " | ".join(f"{m} {b_label} − {a_label}" for m in BY_TYPE) + " |",
              "|---|---|" + "---|" * len(BY_TYPE)]
    for t, row in result["by_type"].items():
        lines.append(f"| {t} | {row['n']} | " + " | ".join(_cell(row.get(m)) for m in BY_TYPE) + " |")
    fb = result["guard_fallback"]
    lines += ["", f"answers the guard replaced by its quotation: {a_label} {fb['a']}, {b_label} {fb['b']}"]
    return "\n".join(lines) + "\n"
