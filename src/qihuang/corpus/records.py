"""Plain data records shared by the corpus steps: a parsed book, its sections and paragraphs (body + notes)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

SegKind = Literal["body", "note", "figure"]


@dataclass
class Paragraph:
    """A paragraph as an ordered list of (kind, text) segments: body text interleaved with notes."""

    segments: list[tuple[SegKind, str]] = field(default_factory=list)

    def body(self) -> str:
        return "".join(t for k, t in self.segments if k == "body")

    def flatten(self) -> tuple[str, list[dict[str, object]]]:
        """Body text and its notes as `{offset, text, kind}` (offset = position in the body)."""
        parts: list[str] = []
        notes: list[dict[str, object]] = []
        pos = 0
        for kind, text in self.segments:
            if kind == "body":
                parts.append(text)
                pos += len(text)
            elif text:
                notes.append({"offset": pos, "text": text, "kind": kind})
        return "".join(parts), notes


@dataclass
class Section:
    """A 篇 (or a heading of a plain text): its path from the table of contents and its paragraphs."""

    path: str
    title: str
    paragraphs: list[Paragraph] = field(default_factory=list)


@dataclass
class Book:
    """One input file after ingest: metadata, structure, and what was done to it."""

    file: str
    title: str
    author: str = ""
    dynasty: str = ""
    year: int | None = None
    category: str = ""
    encoding: str = ""
    kind: str = "classic"
    replacements: list[int] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    size_bytes: int = 0


class RejectedFile(Exception):
    """An input file that cannot be used; `reason` is a short code, the message says why with the path."""

    def __init__(self, path: str, reason: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = reason
        self.message = message
