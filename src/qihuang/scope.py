"""Book scoping for retrieval: a question that names a book (《书名》 or 《书名·篇名》) is searched among that book's
passages, on its other words — the title's characters no longer pull every short passage of the book to the top."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BOOK_TITLE = re.compile(r"《([^《》\n]{1,40})》")
"""A book title in a query; the book is the part before `·`."""
_BOOK_FIELD = re.compile(rb'"book": "((?:[^"\\]|\\.)*)"')
FILES = ("books.npy", "books.json")
"""What a scope is saved as in an index folder: the book number of each passage, and the book names."""


def strip_titles(query: str) -> str:
    """`query` without its 《…》 titles (what is searched inside the named books)."""
    return BOOK_TITLE.sub(" ", query)


class BookScope:
    """The book of every indexed passage, and the passages of the books a query names."""

    def __init__(self, doc_book: np.ndarray, names: list[str]) -> None:
        self.doc_book = doc_book
        self.names = names
        self._ids = {n: i for i, n in enumerate(names)}
        self._resolved: dict[str, list[int]] = {}

    @classmethod
    def of_books(cls, books: Iterable[str]) -> BookScope:
        """From each passage's book, in index order."""
        ids: dict[str, int] = {}
        doc_book = np.fromiter((ids.setdefault(b, len(ids)) for b in books), dtype=np.int32)
        return cls(doc_book, list(ids))

    @classmethod
    def of_jsonl(cls, path: Path) -> BookScope:
        """From an index's passages.jsonl (one line per passage, in index order), without parsing whole lines."""
        books = []
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                m = _BOOK_FIELD.search(line)
                if m is None:
                    raise ValueError(f"{path}:{n}: no book field")
                books.append(json.loads(b'"' + m.group(1) + b'"'))
        return cls.of_books(books)

    def save(self, folder: Path) -> None:
        """Write books.npy and books.json into `folder`."""
        np.save(folder / FILES[0], self.doc_book)
        (folder / FILES[1]).write_text(json.dumps(self.names, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> BookScope | None:
        """A saved scope, or None when `folder` has none (an index built before scopes were saved)."""
        if not all((folder / f).exists() for f in FILES):
            return None
        names = json.loads((folder / FILES[1]).read_text(encoding="utf-8"))
        return cls(np.load(folder / FILES[0]), names)

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
