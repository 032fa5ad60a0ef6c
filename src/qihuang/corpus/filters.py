"""Quality filters: small steps, each returning `(keep, reason)`; the first failing step names the reject.
Character statistics are computed once per passage with numpy (`Probe`) and shared by the steps."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

_RUN = re.compile(r"(.)\1{9,}")
_DEBRIS_CHARS = "0123456789０１２３４５６７８９.．、,，:：;；|｜-—_=＝+*＊#＃~～/\\()（）[]【】〔〕○●◎△□■◇◆…"
_TABLE_SIZE = 0x30000


def _table(chars: str = "", ranges: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    t = np.zeros(_TABLE_SIZE, dtype=np.bool_)
    for c in chars:
        t[ord(c)] = True
    for lo, hi in ranges:
        t[lo:hi + 1] = True
    return t


_CJK_T = _table(ranges=((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF)))
_SPACE_T = _table("\t\n\x0b\x0c\r \xa0\u3000")
_DEBRIS_T = _table(_DEBRIS_CHARS) | _SPACE_T
_CONTENT_T = _CJK_T | _table("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _idx(cps: np.ndarray) -> np.ndarray:
    return np.minimum(cps, _TABLE_SIZE - 1)


Verdict = tuple[bool, str]


def cjk_mask(cps: np.ndarray) -> np.ndarray:
    """Which code points are Chinese characters (CJK unified ideographs, extensions, compatibility)."""
    return _CJK_T[_idx(cps)]


def content_mask(cps: np.ndarray) -> np.ndarray:
    """Chinese characters plus ASCII letters and digits (what deduplication compares)."""
    return _CONTENT_T[_idx(cps)]


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class Probe:
    """A passage with its character statistics, computed lazily and once."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.cps = codepoints(text)
        self._idx = _idx(self.cps)

    @cached_property
    def cjk(self) -> int:
        return int(np.count_nonzero(_CJK_T[self._idx]))

    @cached_property
    def visible(self) -> int:
        return int(len(self.cps) - np.count_nonzero(_SPACE_T[self._idx]))

    @cached_property
    def debris(self) -> int:
        return int(np.count_nonzero(_DEBRIS_T[self._idx]))

    @cached_property
    def top_char(self) -> int:
        vis = np.sort(self.cps[~_SPACE_T[self._idx]])
        if len(vis) == 0:
            return 0
        starts = np.flatnonzero(np.diff(vis)) + 1
        bounds = np.concatenate(([0], starts, [len(vis)]))
        return int(np.diff(bounds).max())


def cjk_count(text: str) -> int:
    """Number of Chinese characters in `text`."""
    return int(cjk_mask(codepoints(text)).sum())


@dataclass
class FilterConfig:
    """Thresholds of the quality filters."""

    min_chars: int = 24
    min_cjk_ratio: float = 0.5
    max_debris_ratio: float = 0.5
    max_top_char_ratio: float = 0.3
    max_replacement: int = 3


def too_short(p: Probe, cfg: FilterConfig) -> Verdict:
    """Fewer Chinese characters than `min_chars`."""
    return (p.cjk >= cfg.min_chars, "too_short")


def mostly_non_chinese(p: Probe, cfg: FilterConfig) -> Verdict:
    """Chinese characters are less than `min_cjk_ratio` of the non-space characters."""
    return (p.visible == 0 or p.cjk / p.visible >= cfg.min_cjk_ratio, "mostly_non_chinese")


def table_debris(p: Probe, cfg: FilterConfig) -> Verdict:
    """Mostly digits, separators, brackets and box symbols: the remains of a table or a figure."""
    return (p.debris <= cfg.max_debris_ratio * max(1, len(p.cps)), "table_debris")


def repeated_chars(p: Probe, cfg: FilterConfig) -> Verdict:
    """A run of 10+ identical characters, or one character making up too much of the passage."""
    if _RUN.search(p.text):
        return (False, "repeated_chars")
    if p.visible >= 40 and p.top_char > cfg.max_top_char_ratio * p.visible:
        return (False, "repeated_chars")
    return (True, "repeated_chars")


def replacement_chars(p: Probe, cfg: FilterConfig) -> Verdict:
    """More than `max_replacement` U+FFFD characters (undecodable bytes)."""
    return (p.text.count("\ufffd") <= cfg.max_replacement, "replacement_chars")


FILTERS: list[Callable[[Probe, FilterConfig], Verdict]] = [
    too_short, mostly_non_chinese, table_debris, repeated_chars, replacement_chars,
]
"""Applied in this order; the first that fails decides the reason."""


def check(text: str | Probe, cfg: FilterConfig) -> Verdict:
    """(True, "") if every filter keeps `text`, else (False, reason of the first failing filter)."""
    p = text if isinstance(text, Probe) else Probe(text)
    for f in FILTERS:
        keep, reason = f(p, cfg)
        if not keep:
            return False, reason
    return True, ""
