"""Records flowing through the instruct steps: `Passage` (input), `Pair` (one question–answer with provenance).

`load_passages` validates the corpus passages file and names the missing field and line on bad input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qihuang.config import ConfigError

PASSAGE_FIELDS: tuple[str, ...] = ("id", "book", "category", "section", "start", "end", "text")
"""Fields a passage must carry (book_file, dynasty, author, notes are optional)."""

TASK_TYPES: tuple[str, ...] = (
    "原文释义", "出处", "篇名归属", "条文定位", "条文原文", "名词概念", "方剂组成", "方剂煎服", "方证主治",
    "药物性味", "药物主治", "病机证候", "治法", "比较辨析", "追问", "原文填空", "术语语境",
)
"""Task types used by the generators (teacher answers may add others; unknown types map to 原文释义)."""


@dataclass
class Passage:
    """One passage of the corpus with its provenance (`start/end`: character span in the cleaned book)."""

    id: str
    book: str
    category: str
    section: str
    start: int
    end: int
    text: str
    dynasty: str = ""
    author: str = ""
    book_file: str = ""

    @property
    def context(self) -> str:
        """The text a grounded answer may draw on: title metadata plus the passage itself."""
        return f"《{self.book}》{self.section}{self.author}{self.dynasty}\n{self.text}"


@dataclass
class Pair:
    """One question–answer pair with provenance; `span` is (start, end) of the supporting text in the passage."""

    question: str
    answer: str
    passage_id: str
    book: str
    section: str
    category: str
    task_type: str
    generator: str
    span: tuple[int, int] = (0, 0)
    dynasty: str = ""
    grounding: float | None = None
    difficulty: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["span"] = list(self.span)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pair:
        d = dict(d)
        d["span"] = tuple(d.get("span") or (0, 0))
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def meta(self, passage: Passage | None = None) -> dict[str, Any]:
        """Provenance for ShareGPT/Alpaca `meta`: span is given both in the passage and in the cleaned book."""
        m: dict[str, Any] = {
            "passage_id": self.passage_id, "book": self.book, "section": self.section,
            "category": self.category, "dynasty": self.dynasty, "task_type": self.task_type,
            "generator": self.generator, "span": list(self.span),
            "grounding": None if self.grounding is None else round(self.grounding, 3),
            "difficulty": None if self.difficulty is None else round(self.difficulty, 3),
        }
        if passage is not None:
            m["book_span"] = [passage.start + self.span[0], passage.start + self.span[1]]
        return m


def _check_passage(obj: dict[str, Any], where: str) -> Passage:
    for name in PASSAGE_FIELDS:
        if name not in obj or obj[name] is None:
            raise ConfigError(f"{where}: passage is missing field {name!r}")
    if not isinstance(obj["text"], str):
        raise ConfigError(f"{where}: field 'text' must be a string")
    for name in ("start", "end"):
        if isinstance(obj[name], bool) or not isinstance(obj[name], int):
            raise ConfigError(f"{where}: field {name!r} must be an integer, got {obj[name]!r}")
    return Passage(
        id=str(obj["id"]), book=str(obj["book"]), category=str(obj["category"]), section=str(obj["section"]),
        start=obj["start"], end=obj["end"], text=obj["text"], dynasty=str(obj.get("dynasty") or ""),
        author=str(obj.get("author") or ""), book_file=str(obj.get("book_file") or ""),
    )


def iter_passages(path: Path) -> Iterator[Passage]:
    """Yield passages from a JSONL file; a bad line raises ConfigError naming file, line and field."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"passages file {path} does not exist (run the corpus stage first or pass --passages)")
    from qihuang.runs import read_jsonl_lines

    for lineno, obj in read_jsonl_lines(path, ConfigError):
        yield _check_passage(obj, f"{path}:{lineno}")


def load_passages(path: Path, limit: int | None = None) -> list[Passage]:
    """All passages of a passages file, validated; with `limit`, at most that many spread evenly over the file
    (so a quick run still sees every book and category)."""
    out = list(iter_passages(path))
    if limit is not None and limit < len(out):
        step = len(out) / max(1, limit)
        out = [out[int(i * step)] for i in range(limit)]
    return out


def reject(pair_or_raw: Pair | dict[str, Any], reason: str, **extra: Any) -> dict[str, Any]:
    """A rejects.jsonl record: the pair (or raw item) plus `reason`."""
    base = pair_or_raw.to_dict() if isinstance(pair_or_raw, Pair) else dict(pair_or_raw)
    base["reason"] = reason
    base.update(extra)
    return base
