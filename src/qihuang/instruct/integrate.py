"""Integrate refined pairs: hold out passages for QA evaluation, merge pairs of one passage into multi-turn
dialogues (ShareGPT), convert to Alpaca, and mix in general instruction data at a ratio."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qihuang.config import ConfigError
from qihuang.instruct import templates as T
from qihuang.instruct.records import Pair, Passage

TURN_ORDER = ("篇名归属", "出处", "条文原文", "条文定位", "原文填空", "方剂组成", "方剂煎服", "方证主治",
              "药物性味", "药物主治", "名词概念", "术语语境", "原文释义", "病机证候", "治法", "比较辨析", "追问")
"""Order of task types inside one dialogue (from locating the text to reasoning about it)."""


def is_heldout(passage_id: str, fraction: float, seed: int) -> bool:
    """Deterministic by-passage split: a passage is held out when its salted hash falls below `fraction`."""
    h = hashlib.blake2b(f"{seed}:{passage_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction


def split_heldout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, heldout) split BY PASSAGE: no passage contributes to both."""
    train, held = [], []
    for p in pairs:
        (held if is_heldout(p.passage_id, fraction, seed) else train).append(p)
    return train, held


def heldout_records(pairs: Iterable[Pair], passages: dict[str, Passage]) -> list[dict[str, Any]]:
    """heldout_qa.jsonl records: question, reference answer, source passage text, provenance."""
    out = []
    for p in pairs:
        psg = passages.get(p.passage_id)
        out.append({"question": p.question, "reference": p.answer, "source": psg.text if psg else "",
                    "meta": p.meta(psg)})
    return out


def _follow_up(q: str, book: str, rng: random.Random) -> str:
    """Rephrase a later turn as a follow-up question (追问) about the same book."""
    if book and f"《{book}》" in q and rng.random() < 0.6:
        q = q.replace(f"《{book}》", rng.choice(("这部书", "该书", "此书")), 1)
    return rng.choice(T.FOLLOW_UP_PREFIX) + q


def integrate(pairs: list[Pair], passages: dict[str, Passage], max_turns: int, seed: int) -> list[dict[str, Any]]:
    """Merge pairs of the same passage into dialogues of 1..max_turns turns (ShareGPT records with meta)."""
    rng = random.Random(seed)
    by: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        by[p.passage_id].append(p)
    rank = {t: i for i, t in enumerate(TURN_ORDER)}
    dialogues = []
    for pid, group in by.items():
        rng.shuffle(group)
        while group:
            k = rng.randint(1, max(1, min(max_turns, len(group))))
            turns, group = group[:k], group[k:]
            turns.sort(key=lambda p: rank.get(p.task_type, len(rank)))
            conv = []
            for i, p in enumerate(turns):
                q = p.question if i == 0 else _follow_up(p.question, p.book, rng)
                conv += [{"from": "human", "value": q}, {"from": "gpt", "value": p.answer}]
            first = turns[0]
            psg = passages.get(pid)
            meta = first.meta(psg)
            meta.update({
                "span": [min(p.span[0] for p in turns), max(p.span[1] for p in turns)],
                "task_types": [p.task_type for p in turns], "turns": len(turns),
                "pairs": [p.meta(psg) for p in turns],
            })
            for key in ("grounding", "difficulty"):  # dialogue level: the mean over its turns (curriculum order)
                vals = [getattr(p, key) for p in turns if getattr(p, key) is not None]
                meta[key] = round(sum(vals) / len(vals), 4) if vals else None
            if psg is not None:
                meta["book_span"] = [psg.start + meta["span"][0], psg.start + meta["span"][1]]
            dialogues.append({"conversations": conv, "meta": meta})
    return dialogues


def to_alpaca(rec: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT record → Alpaca (instruction/input/output, earlier turns in `history`, `system`)."""
    conv = rec["conversations"]
    system = " ".join(m["value"] for m in conv if m["from"] == "system")
    turns = [m for m in conv if m["from"] != "system"]
    pairs = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns) - 1, 2)]
    last_q, last_a = pairs[-1] if pairs else ("", "")
    return {"instruction": last_q, "input": "", "output": last_a, "system": system,
            "history": [list(x) for x in pairs[:-1]], "meta": rec.get("meta", {})}


_ROLE = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


def _general_record(obj: dict[str, Any], where: str, name: str) -> dict[str, Any] | None:
    if "conversations" in obj or "messages" in obj:
        raw = obj.get("conversations") or obj.get("messages") or []
        conv = []
        for m in raw:
            role = _ROLE.get(str(m.get("from", m.get("role", ""))))
            value = m.get("value", m.get("content"))
            if role is None or not isinstance(value, str):
                raise ConfigError(f"{where}: conversation turn needs from/value (or role/content)")
            conv.append({"from": role, "value": value})
    elif "instruction" in obj and "output" in obj:
        conv = []
        if obj.get("system"):
            conv.append({"from": "system", "value": obj["system"]})
        for h, g in obj.get("history") or []:
            conv += [{"from": "human", "value": h}, {"from": "gpt", "value": g}]
        q = obj["instruction"] + (("\n" + obj["input"]) if obj.get("input") else "")
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": obj["output"]}]
    else:
        raise ConfigError(f"{where}: neither Alpaca (instruction/output) nor ShareGPT (conversations) record")
    body = [m for m in conv if m["from"] != "system"]
    if len(body) < 2 or body[-1]["from"] != "gpt" or not all(m["value"].strip() for m in body):
        return None
    return {"conversations": conv, "meta": {"source": "general", "file": name, "task_type": "通用指令",
                                            "category": "通用", "book": "", "passage_id": None}}


def load_general(path: Path) -> list[dict[str, Any]]:
    """General instructions from an Alpaca JSON list / JSONL or a ShareGPT JSONL file, as ShareGPT records."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = [(f"{path}[{i}]", o) for i, o in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg})") from exc
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
    out = []
    for where, obj in items:
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        rec = _general_record(obj, where, path.name)
        if rec is not None:
            out.append(rec)
    return out


def mix(domain: list[dict[str, Any]], general: list[dict[str, Any]], ratio: float, seed: int
        ) -> tuple[list[dict[str, Any]], int]:
    """Add general records so they make up `ratio` of the result (as far as available); shuffled. Returns
    (mixed, number of general records used)."""
    rng = random.Random(seed)
    want = round(ratio / (1 - ratio) * len(domain)) if ratio < 1 else len(general)
    pool = list(general)
    rng.shuffle(pool)
    chosen = pool[: min(want, len(pool))]
    out = domain + chosen
    rng.shuffle(out)
    return out, len(chosen)
