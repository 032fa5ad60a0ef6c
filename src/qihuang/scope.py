"""Book and section scoping for retrieval: a question that names a book (《书名》 or 《书名·篇名》) is searched among
that book's passages, on its other words — the title's characters no longer pull every short passage of the book to
the top; a question that names a section (《卷上·项强》, 「卷四·阿胶」) is searched among the passages of the sections
of that name."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOOK_TITLE = re.compile(r"《([^《》\n]{1,40})》")
"""A book title in a query; the book is the part before `·`."""
SECTION_NAME = re.compile(r"[《「]([^《》「」\n]{2,60})[》」]|“([^“”\n·/]{1,30}(?:[·/][^“”\n·/]{1,30})+)”")
"""A section name in a query: 《…》 or 「…」 with levels joined by `·` or `/`, or a path of two levels or more in
“…” (请问“卷四·蛴螬”一节出自哪部著作？); the name is the match's first group that is set."""
FILES = ("books.npy", "books.json")
"""What a scope is saved as in an index folder: the book number of each passage, and the book names."""


def strip_titles(query: str) -> str:
    """`query` without its 《…》 titles (what is searched inside the named books)."""
    return BOOK_TITLE.sub(" ", query)


def marks_place(query: str) -> bool:
    """Whether `query` writes a book or section name in marks (《…》, 「…」, a path in “…”): what it names is then
    where to look, searched first (`PassageIndex.search`), not a headword to look up elsewhere."""
    return "《" in query or "「" in query or ("“" in query and SECTION_NAME.search(query) is not None)


def strip_sections(query: str) -> str:
    """`query` without its 《…》 / 「…」 names (what is searched inside the named sections)."""
    return SECTION_NAME.sub(" ", query)


@dataclass
class Labels:
    """One label per indexed passage (its book, its section), numbered: what a scope is built, saved and loaded
    from."""

    doc: np.ndarray
    """int32 label number of each passage, in index order."""
    names: list[str]
    """Label of each number."""

    @classmethod
    def of_values(cls, values: Iterable[str]) -> Labels:
        """From each passage's label, in index order."""
        ids: dict[str, int] = {}
        doc = np.fromiter((ids.setdefault(v, len(ids)) for v in values), dtype=np.int32)
        return cls(doc, list(ids))

    @classmethod
    def of_jsonl(cls, path: Path, field: str, required: bool) -> Labels:
        """From an index's passages.jsonl (one line per passage), reading only `field` of each line; a line
        without it is an error when `required`, else labelled ""."""
        pattern = re.compile(b'"' + field.encode() + rb'": "((?:[^"\\]|\\.)*)"')
        values = []
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                m = pattern.search(line)
                if m is None and required:
                    raise ValueError(f"{path}:{n}: no {field} field")
                values.append(json.loads(b'"' + m.group(1) + b'"') if m else "")
        return cls.of_values(values)

    def number(self, name: str) -> int | None:
        """The number of the label `name`; None when no passage has it."""
        return self._numbers.get(name)

    @functools.cached_property
    def _numbers(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def save(self, folder: Path, files: tuple[str, str]) -> None:
        """Write the numbers (.npy) and the names (.json) into `folder`."""
        np.save(folder / files[0], self.doc)
        (folder / files[1]).write_text(json.dumps(self.names, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, files: tuple[str, str]) -> Labels | None:
        """Saved labels, or None when `folder` has none (an index built before they were saved)."""
        if not all((folder / f).exists() for f in files):
            return None
        return cls(np.load(folder / files[0]), json.loads((folder / files[1]).read_text(encoding="utf-8")))


class BookScope:
    """The book of every indexed passage, and the passages of the books a query names."""

    FILES = FILES

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.doc_book = labels.doc
        self.names = labels.names
        self._ids = {n: i for i, n in enumerate(self.names)}
        self._resolved: dict[str, list[int]] = {}

    @classmethod
    def of_books(cls, books: Iterable[str]) -> BookScope:
        """From each passage's book, in index order."""
        return cls(Labels.of_values(books))

    @classmethod
    def of_jsonl(cls, path: Path) -> BookScope:
        """From an index's passages.jsonl, without parsing whole lines (a line without a book is an error)."""
        return cls(Labels.of_jsonl(path, "book", required=True))

    def save(self, folder: Path) -> None:
        """Write books.npy and books.json into `folder`."""
        self.labels.save(folder, self.FILES)

    @classmethod
    def load(cls, folder: Path) -> BookScope | None:
        """A saved scope, or None when `folder` has none (an index built before scopes were saved)."""
        labels = Labels.load(folder, cls.FILES)
        return cls(labels) if labels is not None else None

    def books_of(self, name: str) -> list[int]:
        """Book numbers a title names: the book of exactly that name, else every book whose name contains it
        (《黄帝内经》 → 黄帝内经素问集注, 黄帝内经灵枢集注 …); none for a name of one character."""
        name = name.strip()
        if name not in self._resolved:
            if name in self._ids:
                self._resolved[name] = [self._ids[name]]
            else:
                self._resolved[name] = [i for i, n in enumerate(self.names) if len(name) >= 2 and name in n]
        return self._resolved[name]

    def mask(self, query: str) -> np.ndarray | None:
        """Boolean mask of the passages of every book `query` names; None when it names no known book."""
        books = sorted({b for m in BOOK_TITLE.finditer(query) for b in self.books_of(m.group(1).split("·")[0])})
        if not books:
            return None
        return np.isin(self.doc_book, np.asarray(books, dtype=np.int32))


def _norm_section(name: str) -> str:
    return "/".join(p.strip() for p in re.split(r"[·/]", name) if p.strip())


class SectionScope:
    """The section of every indexed passage, and the passages of the sections a query names (a name matches a
    section path that ends with it: 「卷四·阿胶」 → `卷四/阿胶` in every book that has one)."""

    FILES = ("sections.npy", "sections.json")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.doc_section = labels.doc
        self.names = labels.names
        self._norm = [_norm_section(n) for n in self.names]
        self._resolved: dict[str, list[int]] = {}

    @classmethod
    def of_sections(cls, sections: Iterable[str]) -> SectionScope:
        """From each passage's section, in index order."""
        return cls(Labels.of_values(sections))

    @classmethod
    def of_jsonl(cls, path: Path) -> SectionScope:
        """From an index's passages.jsonl without parsing whole lines (a line without a section: "")."""
        return cls(Labels.of_jsonl(path, "section", required=False))

    def save(self, folder: Path) -> None:
        """Write sections.npy and sections.json into `folder`."""
        self.labels.save(folder, self.FILES)

    @classmethod
    def load(cls, folder: Path) -> SectionScope | None:
        """A saved scope, or None when `folder` has none."""
        labels = Labels.load(folder, cls.FILES)
        return cls(labels) if labels is not None else None

    def sections_of(self, name: str) -> list[int]:
        """Section numbers whose path is `name` or ends with it (levels compared whole)."""
        want = _norm_section(name)
        if want not in self._resolved:
            tail = "/" + want
            self._resolved[want] = [i for i, n in enumerate(self._norm) if n == want or n.endswith(tail)] \
                if want else []
        return self._resolved[want]

    def mask(self, query: str, paths: bool = False) -> np.ndarray | None:
        """Boolean mask of the passages of every section `query` names (with `paths`, only names of two levels or
        more: 「卷一·黄芩」, not 「寒疟」, which may be a term); None when it names no known section."""
        names = (m.group(1) or m.group(2) for m in SECTION_NAME.finditer(query))
        found = sorted({i for n in names if not paths or re.search(r"[·/]", n) for i in self.sections_of(n)})
        if not found:
            return None
        return np.isin(self.doc_section, np.asarray(found, dtype=np.int32))

    def headwords(self) -> set[str]:
        """Every level of every section name (篇名 such as 阿胶, 拟用诸法, 小柴胡汤方): the library's own vocabulary."""
        return {p for n in self._norm for p in n.split("/") if p}
