"""Multiple-choice files: CMMLU / TCMChat / any letter-column CSV, and JSONL/JSON with question, options, answer.

Malformed rows (empty question, missing option, answer letter not among the options) are skipped and reported
with their row numbers (1 = first record after the header / first line); a file with no valid row is an error.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LETTERS = "ABCDEF"
CATEGORY_COLUMNS = ("category", "subject", "domain", "chapter", "type")
_OPTION_LINE = re.compile(r"^\s*([A-Fa-f])\s*[.．、:：)）]?\s*(.*)$")


class EvalDataError(ValueError):
    """An evaluation file cannot be used (unreadable, no recognisable columns, or zero valid rows)."""


@dataclass
class MCQItem:
    """One question: options keyed by letter in order, the answer letter, and where it came from."""

    question: str
    options: dict[str, str]
    answer: str
    category: str
    row: int


@dataclass
class MCQSet:
    """The valid items of one file plus the rows skipped, with reasons."""

    path: Path
    format: str
    items: list[MCQItem]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    total_rows: int = 0


def _clean(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _norm_letter(value: Any) -> str:
    text = _clean(value).upper().strip(" .．、)）")
    return text


def _check(question: str, options: dict[str, str], answer: str) -> tuple[str, str] | None:
    """(kind, detail) when the row is malformed, else None."""
    if not question:
        return "empty question", ""
    if len(options) < 2:
        return "fewer than 2 options", f"{len(options)} option(s)"
    missing = [k for k, v in options.items() if not v]
    if missing:
        return "missing option", "".join(missing)
    if len(answer) != 1 or answer not in options:
        return "answer not among options", f"answer {answer!r}, options {''.join(options)}"
    return None


def _skip(out: MCQSet, row: int, kind: str, detail: str = "") -> None:
    out.skipped.append({"row": row, "reason": kind, "detail": detail})


def _category(row: dict[str, str], default: str) -> str:
    for col in CATEGORY_COLUMNS:
        if row.get(col):
            return row[col]
    return default


def _read_csv(path: Path, fallback_category: str) -> MCQSet:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="gb18030")
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise EvalDataError(f"{path}: empty file") from None
    cols = [h.strip().lower() for h in header]
    if "question" not in cols or "answer" not in cols:
        raise EvalDataError(f"{path}: needs a `question` and an `answer` column (case-insensitive); got {header}")
    letter_cols = [(c.upper(), i) for i, c in enumerate(cols) if len(c) == 1 and c.upper() in LETTERS]
    if len(letter_cols) < 2:
        raise EvalDataError(f"{path}: needs 2-6 option columns named A..F; got {header}")
    fmt = ("cmmlu" if cols[:1] == [""] and len(letter_cols) == 4 else
           "tcmchat" if "parse" in cols else "letter-csv")
    q_i, a_i = cols.index("question"), cols.index("answer")
    out = MCQSet(path, fmt, [])
    for rownum, values in enumerate(reader, 1):
        if not any(v.strip() for v in values):
            continue
        out.total_rows += 1
        row = {cols[i]: _clean(v) for i, v in enumerate(values) if i < len(cols)}
        options = {letter: _clean(values[i]) if i < len(values) else "" for letter, i in letter_cols}
        # trailing empty option columns (e.g. a 4-option question in a 5-column file) are not options
        while len(options) > 2 and not options[next(reversed(options))]:
            options.popitem()
        question = _clean(values[q_i]) if q_i < len(values) else ""
        answer = _norm_letter(values[a_i]) if a_i < len(values) else ""
        bad = _check(question, options, answer)
        if bad:
            _skip(out, rownum, *bad)
            continue
        out.items.append(MCQItem(question, options, answer, _category(row, fallback_category), rownum))
    return out


def _parse_options(raw: Any) -> dict[str, str] | None:
    if isinstance(raw, dict):
        return {_norm_letter(k): _clean(v) for k, v in raw.items()}
    if isinstance(raw, list):
        if len(raw) > len(LETTERS):
            return None
        return {LETTERS[i]: _clean(v) for i, v in enumerate(raw)}
    if isinstance(raw, str):  # "A 原发病\nB 出血部位 ..." (CMExam)
        opts: dict[str, str] = {}
        for line in raw.splitlines():
            m = _OPTION_LINE.match(line)
            if m and line.strip():
                opts[m.group(1).upper()] = m.group(2).strip()
        return opts
    return None


def json_records(path: Path) -> list[Any]:
    """Records of a JSON list or JSONL file (a malformed line becomes None, reported by the caller as a bad row)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalDataError(f"{path}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, list):
            raise EvalDataError(f"{path}: expected a JSON list of records")
        return data
    records: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append(None)  # reported as a malformed row
    return records


def _read_json(path: Path, fallback_category: str) -> MCQSet:
    out = MCQSet(path, "jsonl" if path.suffix.lower() != ".json" else "json", [])
    for rownum, rec in enumerate(json_records(path), 1):
        out.total_rows += 1
        if not isinstance(rec, dict):
            _skip(out, rownum, "not a JSON object")
            continue
        row = {str(k).strip().lower(): v for k, v in rec.items()}
        options = _parse_options(row.get("options"))
        if options is None:
            _skip(out, rownum, "no usable options", "expected a dict, a list or lettered lines")
            continue
        question = _clean(row.get("question"))
        answer = _norm_letter(row.get("answer"))
        if answer not in options:  # the answer may be given as the option text
            answer = next((k for k, v in options.items() if v and v == _clean(row.get("answer"))), answer)
        bad = _check(question, options, answer)
        if bad:
            _skip(out, rownum, *bad)
            continue
        cats = {k: _clean(v) for k, v in row.items() if isinstance(v, str)}
        out.items.append(MCQItem(question, options, answer, _category(cats, fallback_category), rownum))
    return out


def load_mcq(path: Path, limit: int = 0) -> MCQSet:
    """Read a multiple-choice file (CSV, JSONL or JSON list); keep the first `limit` valid items (0 = all)."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    category = path.stem
    data = _read_csv(path, category) if path.suffix.lower() == ".csv" else _read_json(path, category)
    if not data.items:
        reasons = sorted({s["reason"] for s in data.skipped})[:3]
        raise EvalDataError(f"{path}: no valid question among {data.total_rows} row(s)"
                            + (f" (e.g. {'; '.join(reasons)})" if reasons else ""))
    if limit and len(data.items) > limit:
        data.items = data.items[:limit]
        data.skipped = [s for s in data.skipped if s["row"] < data.items[-1].row]
    return data


HEADER = "以下是单项选择题，请选出正确答案。\n\n"
CLOZE_HEADER = "以下是医学问题，请给出正确答案。\n\n"
FORMULATIONS = ("mcf", "cf")
"""mcf: the options are listed in the prompt and each is scored as its answer line (`B. 清热泻火`); cf (cloze): the
prompt is the question alone and each option's own text is scored as its answer (OLMES: small models do better)."""


def format_question(item: MCQItem, cloze: bool = False) -> str:
    """The question (with its lettered options unless `cloze`) and the answer cue (`答案：`), no answer."""
    if cloze:
        return f"{item.question}\n答案："
    opts = "\n".join(f"{k}. {v}" for k, v in item.options.items())
    return f"{item.question}\n{opts}\n答案："


def answer_text(item: MCQItem, letter: str, cloze: bool = False) -> str:
    """What follows `答案：` for option `letter`: the letter and the option text (`B. 清热泻火`), or the text alone
    when `cloze`."""
    return item.options[letter] if cloze else f"{letter}. {item.options[letter]}"


def shared_text(examples: list[MCQItem] | None = None, cloze: bool = False) -> str:
    """The part every prompt of a file shares: header and solved examples (each ending with its answer line)."""
    shots = "".join(f"{format_question(ex, cloze)}{answer_text(ex, ex.answer, cloze)}\n\n" for ex in examples or [])
    return f"{CLOZE_HEADER if cloze else HEADER}{shots}"


def build_prompt(item: MCQItem, examples: list[MCQItem] | None = None, cloze: bool = False) -> str:
    """Header, solved examples, then the question up to `答案：` (= shared_text + format_question)."""
    return shared_text(examples, cloze) + format_question(item, cloze)
