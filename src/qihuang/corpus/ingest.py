"""Ingest: find input files, detect each file's encoding, decode with every replacement recorded, and parse it
(upstream classics format, plain .txt/.md, or JSONL) into a `Book`."""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator
from pathlib import Path

from qihuang.corpus.classics import is_classic, parse_classic
from qihuang.corpus.plain import parse_jsonl, parse_markdown, parse_plain
from qihuang.corpus.records import Book, RejectedFile

SUFFIXES = (".txt", ".md", ".jsonl")
"""File types read from a source directory; anything else there is listed as rejected (unsupported type)."""

MAX_BAD_RATIO = 0.01
"""A file whose undecodable bytes exceed this share under every candidate encoding has an unknown encoding."""

_TITLE_FROM_NAME = re.compile(r"^\d+[-_ ]+")


def survey(source: Path) -> tuple[list[Path], list[tuple[Path, str, str]]]:
    """(regular files to read, sorted; refused entries as (path, reason, message)). Hidden entries, links that
    dangle, point outside `source` or to a folder, and things that are not regular files are refused with a
    reason, so every entry of the folder is accounted for; nothing outside `source` is ever read."""
    if not source.is_dir():
        return [source], []
    root = source.resolve()
    files: list[Path] = []
    refused: list[tuple[Path, str, str]] = []
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        d = Path(dirpath)
        for name in sorted(dirnames):
            p = d / name
            if name.startswith("."):
                refused.append((p, "hidden", "hidden folder, not read"))
            elif p.is_symlink():
                refused.append((p, "link_to_folder", "symbolic link to a folder, not followed"))
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and not (d / n).is_symlink())
        for name in filenames:
            p = d / name
            why = _refusal(p, root)
            if why is None:
                files.append(p)
            else:
                refused.append((p, *why))
    return sorted(files), sorted(refused)


def _refusal(p: Path, root: Path) -> tuple[str, str] | None:
    """Why the directory entry `p` is not read (None: it is a regular file inside the source folder)."""
    if p.name.startswith("."):
        return "hidden", "hidden file, not read"
    if p.is_symlink():
        try:
            target = p.resolve(strict=True)
        except (OSError, RuntimeError):
            return "dangling_link", "symbolic link to a missing target"
        if not target.is_relative_to(root):
            return "link_outside_source", "symbolic link pointing outside the source folder, not followed"
        if not target.is_file():
            return "not_a_file", "symbolic link to something that is not a regular file"
        return None
    if not p.is_file():
        return "not_a_file", "not a regular file"
    return None


def printable_name(name: str) -> str:
    """`name` as valid UTF-8 text (undecodable bytes of a file name become U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def valid_name(name: str) -> bool:
    """True when `name` (a file name from the OS) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def book_key(name: str) -> str:
    """The unique key of an input file (relative path without suffix): names books/<key>.txt and passage ids, so
    two `x.txt` in different folders never collide (`a/x`, `b/x`); a top-level file's key is its stem."""
    return Path(name).with_suffix("").as_posix()


def title_from_name(path: Path) -> str:
    """`457-伤寒论.txt` -> `伤寒论`."""
    return _TITLE_FROM_NAME.sub("", path.stem) or path.stem


_RECORDED: list[int] = []


def _record_error(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    _RECORDED.append(exc.start)
    return "\ufffd", max(exc.end, exc.start + 1)


codecs.register_error("qihuang-record", _record_error)


def decode_recording(data: bytes, encoding: str) -> tuple[str, list[int]]:
    """Decode `data`; each undecodable byte sequence becomes U+FFFD and its byte offset is recorded."""
    try:
        return data.decode(encoding), []
    except UnicodeDecodeError:
        pass
    _RECORDED.clear()
    text = data.decode(encoding, errors="qihuang-record")
    offsets = list(_RECORDED)
    _RECORDED.clear()
    return text, offsets


def detect_and_decode(data: bytes, path: str) -> tuple[str, str, list[int]]:
    """(text, encoding name, replacement byte offsets); RejectedFile for empty, binary or unknown encodings."""
    if not data.strip():
        raise RejectedFile(path, "empty", "empty file (no text)")
    if data.startswith(codecs.BOM_UTF8):
        text, bad = decode_recording(data[3:], "utf-8")
        return text, "utf-8-sig", [b + 3 for b in bad]
    if data.startswith(codecs.BOM_UTF16_LE) or data.startswith(codecs.BOM_UTF16_BE):
        enc = "utf-16-le" if data.startswith(codecs.BOM_UTF16_LE) else "utf-16-be"
        text, bad = decode_recording(data[2:], enc)
        return text, "utf-16", [b + 2 for b in bad]
    head = data[:8192]
    if b"\x00" in head:
        # UTF-16 without BOM: accept it only if it decodes cleanly to mostly Chinese/ASCII text
        for enc in ("utf-16-le", "utf-16-be"):
            try:
                text = data.decode(enc)
            except UnicodeDecodeError:
                continue
            if _looks_like_text(text):
                return text, enc, []
        raise RejectedFile(path, "binary", "binary file (NUL bytes), not text")
    for enc in ("utf-8", "gb18030"):
        try:
            return data.decode(enc), enc, []
        except UnicodeDecodeError:
            continue
    best: tuple[str, str, list[int]] | None = None
    for enc in ("utf-8", "gb18030"):
        probe = data[:65536]
        _, bad_probe = decode_recording(probe, enc)
        if best is not None and len(bad_probe) > max(8, MAX_BAD_RATIO * len(probe)):
            continue
        text, bad = decode_recording(data, enc)
        if best is None or len(bad) < len(best[2]):
            best = (text, enc, bad)
    assert best is not None
    if len(best[2]) > max(8, MAX_BAD_RATIO * len(data)):
        raise RejectedFile(path, "unknown_encoding",
                           f"unknown encoding: {len(best[2])} undecodable byte sequences even as {best[1]}")
    control = sum(1 for ch in best[0][:4096] if ord(ch) < 32 and ch not in "\r\n\t\f")
    if control > 0.05 * min(len(best[0]), 4096):
        raise RejectedFile(path, "binary", "binary file (control characters), not text")
    return best


def _looks_like_text(text: str) -> bool:
    sample = text[:4096]
    good = sum(1 for ch in sample if ("\u4e00" <= ch <= "\u9fff") or (" " <= ch <= "~") or ch in "\r\n\t"
               or ("\u3000" <= ch <= "\u303f") or ("\uff00" <= ch <= "\uffef"))
    return good >= 0.9 * max(1, len(sample))


def read_file(path: Path) -> bytes:
    """The bytes of `path`; a file that vanished or cannot be read is a RejectedFile."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RejectedFile(str(path), "vanished", "file vanished before it could be read") from None
    except IsADirectoryError:
        raise RejectedFile(str(path), "not_a_file", "not a regular file") from None
    except OSError as exc:
        raise RejectedFile(str(path), "unreadable", f"cannot read ({exc.strerror})") from None


def ingest_file(path: Path, name: str | None = None) -> Book:
    """Read, decode and parse one input file into a Book (RejectedFile when it cannot be used)."""
    name = name or path.name
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise RejectedFile(name, "unsupported_type", f"unsupported file type {suffix or '(none)'!r}; "
                           f"expected one of {', '.join(SUFFIXES)}")
    data = read_file(path)
    text, encoding, replacements = detect_and_decode(data, name)
    title = title_from_name(path)
    if suffix == ".jsonl":
        book = parse_jsonl(text, name, title)
    elif suffix == ".md":
        book = parse_markdown(text, name, title)
    elif is_classic(text):
        book = parse_classic(text, name, title)
    else:
        book = parse_plain(text, name, title)
    book.encoding = encoding
    book.replacements = replacements
    book.size_bytes = len(data)
    book.stats["replacement_chars"] += len(replacements)
    if not any(p.body().strip() for s in book.sections for p in s.paragraphs):
        raise RejectedFile(name, "no_text", "no body text after parsing")
    return book


def iter_header_lines(path: Path, limit: int = 2048) -> Iterator[str]:
    """The first lines of a file, decoded leniently (for cheap metadata before the full parse)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(limit)
    except OSError:
        return
    for enc in ("utf-8", "gb18030"):
        try:
            text = head.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        text = head.decode("gb18030", errors="replace")
    yield from text.splitlines()[:12]
