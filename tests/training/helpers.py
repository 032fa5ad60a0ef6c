"""Invented classical-style text for tests (no book text in the repo)."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHARS = "天地阴阳气血脉寒热虚实表里风湿燥火肝心脾肺肾胃胆经络汤散丸方治病证药草木金水土营卫津液神志精骨筋"
PATTERNS = ["{a}{b}者，{c}{d}之{e}也。", "{a}{b}不{c}，则{d}{e}生焉。", "凡{a}{b}之病，当{c}其{d}{e}。",
            "{a}主{b}，{c}主{d}，{e}{a}相{b}。", "问曰：{a}{b}何如？答曰：{c}{d}而{e}。"]


def invented_text(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(n_sentences):
        p = rng.choice(PATTERNS)
        out.append(p.format(**{k: rng.choice(CHARS) for k in "abcde"}))
    return "".join(out)


def write_passages(path: Path, n: int, seed: int, book: str = "假书", sentences: int = 12) -> Path:
    """n passages of invented text as corpus-stage JSONL."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            text = invented_text(sentences, seed * 1000 + i)
            fh.write(json.dumps({"id": f"{book}-{i}", "book": f"{book}{i % 3}", "category": "test", "section": "",
                                 "start": 0, "end": len(text), "text": text}, ensure_ascii=False) + "\n")
    return path
