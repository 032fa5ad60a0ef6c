"""Robust parsing of teacher answers into question–answer items: plain JSON, fenced JSON, JSON embedded in prose,
`{"pairs": [...]}` wrappers, and numbered 问/答 (or Q/A) lists. Unparseable text raises `ParseError`."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_KEYS = {
    "question": ("question", "q", "问题", "问", "instruction", "query"),
    "answer": ("answer", "a", "答案", "答", "回答", "output", "response"),
    "type": ("type", "task_type", "类型", "题型"),
    "evidence": ("evidence", "依据", "原文依据", "原文", "source"),
}
_WRAPPERS = ("pairs", "qa", "qas", "data", "items", "questions", "result", "results", "问答")
_MARK = re.compile(
    r"(?:^|\n)[ \t]*(?:[#>*\-]+[ \t]*)?(?:第?\d{1,2}[.、)）．:：]?[ \t]*)?(?:\*\*)?"
    r"(?P<kind>问题|提问|问|Q|答案|回答|答|A)[ \t]*\d{0,2}[ \t]*(?:\*\*)?[ \t]*[:：][ \t]*(?:\*\*)?",
)


class ParseError(ValueError):
    """The teacher's text holds no recognizable question–answer pairs."""


def _norm_item(obj: Any) -> dict[str, str] | None:
    if not isinstance(obj, dict):
        return None
    low = {str(k).strip().lower(): v for k, v in obj.items()}
    out: dict[str, str] = {}
    for field, names in _KEYS.items():
        for n in names:
            v = low.get(n)
            if isinstance(v, (str, int, float)) and str(v).strip():
                out[field] = str(v).strip()
                break
    return out if "question" in out and "answer" in out else None


def _items_from_json(data: Any) -> list[dict[str, str]] | None:
    if isinstance(data, dict):
        for w in _WRAPPERS:
            if isinstance(data.get(w), list):
                data = data[w]
                break
        else:
            one = _norm_item(data)
            return [one] if one else None
    if not isinstance(data, list):
        return None
    items = [x for x in (_norm_item(o) for o in data) if x]
    return items or None


def _try_json(text: str) -> list[dict[str, str]] | None:
    text = text.strip()
    if not text:
        return None
    try:
        return _items_from_json(json.loads(text))
    except json.JSONDecodeError:
        pass
    for open_, close in (("[", "]"), ("{", "}")):
        a, b = text.find(open_), text.rfind(close)
        if 0 <= a < b:
            try:
                got = _items_from_json(json.loads(text[a : b + 1]))
            except json.JSONDecodeError:
                continue
            if got:
                return got
    return None


def _numbered(text: str) -> list[dict[str, str]]:
    marks = list(_MARK.finditer(text))
    items: list[dict[str, str]] = []
    q: str | None = None
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[m.end() : end].strip().strip("*").strip()
        is_q = m.group("kind") in ("问题", "提问", "问", "Q")
        if is_q:
            q = body
        elif q:
            if body:
                items.append({"question": q, "answer": body})
            q = None
    return items


def parse_pairs(text: str) -> list[dict[str, str]]:
    """Question–answer items (`question`, `answer`, optional `type`, `evidence`) from a teacher's reply."""
    if not text or not text.strip():
        raise ParseError("empty reply")
    for block in _FENCE.findall(text):
        got = _try_json(block)
        if got:
            return got
    got = _try_json(text)
    if got:
        return got
    got = _numbered(text)
    if got:
        return got
    raise ParseError("no question-answer pairs found (neither JSON nor a numbered 问/答 list)")


def parse_judge(text: str) -> bool | None:
    """The judge's verdict: True/False, or None when it cannot be read."""
    for chunk in [*_FENCE.findall(text or ""), text or ""]:
        a, b = chunk.find("{"), chunk.rfind("}")
        if 0 <= a < b:
            try:
                v = json.loads(chunk[a : b + 1]).get("supported")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(v, bool):
                return v
            if isinstance(v, str):
                return v.strip().lower() in ("true", "yes", "是")
    t = (text or "").strip()
    if t.startswith(("是", "支持", "有依据")):
        return True
    if t.startswith(("否", "不", "无依据")):
        return False
    return None
