"""Verbatim quotations: once an answer opens a quote mark (“ 「 『), it may only copy a span of the passages shown
until it closes it — a small model's misquotes (「上工治未病而不治未症」) cannot be generated. Works on the bytes the
vocabulary pieces stand for, so byte-level BPE (a CJK character in 2–3 pieces), SentencePiece and extended
vocabularies all copy the same text."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MARKS = {"“": "”", "「": "」", "『": "』"}
"""Opening quote mark → its closing mark."""

_OPENERS = {o.encode("utf-8"): c.encode("utf-8") for o, c in MARKS.items()}
_TAIL = max(len(o) for o in _OPENERS)


_CLAUSE_MARKS = frozenset("，。、；：？！,.;:?! \t\n”」』）)》")
"""Marks that bound a clause. A quotation opens on a clause's first character (after one of these, an opening mark,
or at the passage's start) and closes at a clause's end (before or after one of these, or at the span's end).
Measured on the demo's 150 held-out-book questions (benchmarks/RESULTS.md, session 11): quotations opening anywhere
copied fragments (「升胃降」 out of 脾升胃降) and scored 1.2 ROUGE-L points lower; closing anywhere cut lists short
(「桂枝三两 芍药」) at equal scores."""


_BARE = b""
"""The "closing mark" of a quotation opened without one (a bare copy of the lead): it ends at the lead's end."""


@dataclass(frozen=True)
class Quotable:
    """What one answer's quotations may copy."""

    sources: tuple[str, ...] = ()
    """The passages as the prompt shows them: a quotation copies a span of one, from a clause's first character to a
    clause's end."""
    lead: str = ""
    """The span the answer's first quotation copies whole, from its first character to its last ("": none, the
    first is as free as the rest): the cited passage's sentences that match the question best
    (`answer_guard.lead_quote`, what the answer guard quotes). The model decides whether and where to quote; which
    sentence it quotes first is the retriever's. Measured on the demo's held-out books (RESULTS session 12): the
    final model quoted a later clause of its window than the one the question matches 60 times in 93."""

    def __bool__(self) -> bool:
        return bool(self.lead) or any(self.sources)


def _char_start(byte: int) -> bool:
    """Whether a UTF-8 byte starts a character (not a continuation byte)."""
    return byte & 0xC0 != 0x80


class QuoteVocab:
    """A tokenizer's pieces as bytes, indexed for copying: bytes → ids, and the ids whose text starts with each
    closing mark (`quote_vocab` builds it once per tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        from qihuang.tokenizer import piece_bytes

        self.pieces = piece_bytes(tokenizer)
        """Bytes of each id (None: special tokens, never inside a quotation)."""
        self.ids: dict[bytes, list[int]] = {}
        """Bytes → the ids that spell exactly them."""
        for tid, raw in enumerate(self.pieces):
            if raw:
                self.ids.setdefault(raw, []).append(tid)
        self.longest = max((len(b) for b in self.ids), default=1)
        """Bytes of the longest piece."""
        self.closing: dict[bytes, list[int]] = {
            c: [tid for tid, raw in enumerate(self.pieces) if raw and raw.startswith(c) and len(raw) > len(c)]
            for c in _OPENERS.values()}
        """Closing mark → ids that close it and go on (`”。`): their text after the mark is free."""


@functools.lru_cache(maxsize=4)
def quote_vocab(tokenizer: Any) -> QuoteVocab:
    """`tokenizer`'s QuoteVocab, built once per tokenizer object (as `tokenizer.suppressed_ids`)."""
    return QuoteVocab(tokenizer)


class QuoteCopy:
    """One answer's quotation state over the tokens generated so far (`push`/`pop`, like `decoding.Repetition`):
    outside a quotation anything may follow; inside, `allowed` is the ids that continue a verbatim span of one of
    `sources` (the passages shown) opened on a clause's first character, or, at the end of a clause, close the
    quotation — a quotation is whole clauses — unless that repeats an earlier quotation of the answer word for word
    (a loop): it must then copy on. A quotation that reaches the end of its span can only close (or, repeating, ends
    unconstrained: nothing is left to copy). With a `lead`, the answer's first quotation copies it whole and closes
    at its end; an answer that starts copying the lead without a mark (its first characters are the lead's) copies
    it whole too, and goes on free after it."""

    def __init__(self, vocab: QuoteVocab, sources: Sequence[str], lead: str = "") -> None:
        self.vocab = vocab
        texts = [t for t in sources if t]
        self._lead = [(len(texts), 0)] if lead else None  # the first quotation's one start: the lead's first byte
        if lead:
            texts.append(lead)
        self.sources = [t.encode("utf-8") for t in texts]
        self._starts = [(k, len(text[:i].encode("utf-8"))) for k, text in enumerate(texts)
                        for i, ch in enumerate(text)
                        if ch not in _CLAUSE_MARKS and (i == 0 or text[i - 1] in _CLAUSE_MARKS or text[i - 1] in MARKS)]
        self._tail = b""  # the last bytes generated outside a quotation (to see a mark open)
        self._closer: bytes | None = None  # the closing mark of the open quotation (None: not in one)
        self._cands: list[tuple[int, int]] = []  # (source, offset) where the copy may go on; source -1: the mark
        self._text = b""  # what the open quotation copied so far
        self._quoted: frozenset[bytes] = frozenset()  # the answer's closed quotations (none may be repeated)
        self._history: list[tuple[bytes, bytes | None, list[tuple[int, int]], bytes, frozenset[bytes], bool]] = []
        self._first: list[int] | None = None  # `allowed` right after a mark opens (the same for every quotation)
        self._begun = False  # the answer has more than white space (a bare copy of the lead starts it or never)

    @property
    def inside(self) -> bool:
        """Whether a quotation is open."""
        return self._closer is not None

    @property
    def _pinned(self) -> bool:
        """Whether the quotation opening (or open) is the answer's first, which copies the lead whole."""
        return self._lead is not None and not self._quoted

    def push(self, token: int) -> None:
        """Append one generated token."""
        self._history.append((self._tail, self._closer, self._cands, self._text, self._quoted, self._begun))
        token = int(token)
        raw = (self.vocab.pieces[token] if 0 <= token < len(self.vocab.pieces) else None) or b""
        if self._closer is not None:
            self._advance(raw)
            return
        if not self._begun and self._bare_lead(raw):
            return
        self._tail = (self._tail + raw)[-_TAIL:]
        opened = next((c for o, c in _OPENERS.items() if self._tail.endswith(o)), None)
        if opened is not None and self.sources:
            self._closer, self._cands, self._text = opened, self._lead if self._pinned else self._starts, b""

    def _bare_lead(self, raw: bytes) -> bool:
        """At the answer's start: a piece that begins the lead (after white space) opens a quotation without a mark
        (`_BARE`), which copies the lead whole and ends at its end. True when it did."""
        body = raw.lstrip()
        if not body:
            return False
        self._begun = True
        if not self._pinned or self._lead is None:
            return False
        k = self._lead[0][0]  # the lead's index among the sources
        if not self.sources[k].startswith(body):
            return False
        self._closer, self._cands, self._text = _BARE, [(k, len(body))], body
        if len(body) == len(self.sources[k]):
            self._close()
        return True

    def pop(self) -> None:
        """Remove the last token pushed (undoes `push`)."""
        self._tail, self._closer, self._cands, self._text, self._quoted, self._begun = self._history.pop()

    def _seq(self, k: int) -> bytes:
        assert self._closer is not None
        return self._closer if k < 0 else self.sources[k]

    def _advance(self, raw: bytes) -> None:
        """Move the open quotation on by `raw`: a copy goes on, the mark closes (the quotation ends), or a piece
        no span continues ends the quotation too (nothing is constrained after it)."""
        closing = next((p for k, p in self._cands if k < 0 and raw.startswith(self._seq(k)[p:])), None)
        if not raw or closing is not None:
            if closing and self._text.endswith(self._seq(-1)[:closing]):
                self._text = self._text[:-closing]  # the mark's first pieces also matched the copy: not copied text
            self._close()
            return
        nxt = [(k, p + len(raw)) for k, p in self._cands if self._seq(k)[p:p + len(raw)] == raw]
        if not nxt:
            self._close()
            return
        copy = [c for c in nxt if c[0] >= 0]
        if self._closer == _BARE:  # a bare copy of the lead: ends with it, nothing to close
            self._text += raw
            self._cands = nxt
            if any(p >= len(self.sources[k]) for k, p in copy):
                self._close()
            return
        if copy:
            self._text += raw
            ends = (any(p >= len(self.sources[k]) for k, p in copy) if self._pinned  # the lead: at its end only
                    else any(self._clause_end(k, p) for k, p in copy))
            if ends and self._text not in self._quoted:
                nxt.append((-1, 0))  # a whole clause copied, not an earlier quotation again: the mark may close
        self._cands = nxt

    def _clause_end(self, k: int, p: int) -> bool:
        """Whether offset `p` of source `k` ends a clause: the span's end, or a mark / space follows or was the last
        character copied."""
        src = self.sources[k]
        if p >= len(src):
            return True
        if not _char_start(src[p]):
            return False
        before = src[max(0, p - 4):p].decode("utf-8", errors="ignore")[-1:]
        return src[p:p + 4].decode("utf-8", errors="ignore")[:1] in _CLAUSE_MARKS or before in _CLAUSE_MARKS

    def _close(self) -> None:
        """The quotation ends (closed, or left by a piece no span continues)."""
        self._quoted = self._quoted | {self._text}
        self._closer, self._cands, self._tail, self._text = None, [], b"", b""

    def allowed(self) -> list[int] | None:
        """Ids that may come next: None outside a quotation (no constraint), else the copy continuations and the
        closing mark (not in an empty quotation), ascending."""
        if self._closer is None:
            return None
        first = self._cands is self._starts
        if first and self._first is not None:
            return self._first
        out: set[int] = set()
        ids, longest = self.vocab.ids, self.vocab.longest
        for k, p in self._cands:
            seq = self._seq(k)
            for n in range(1, min(longest, len(seq) - p) + 1):
                out.update(ids.get(seq[p:p + n], ()))
            if k < 0 and p == 0:
                out.update(self.vocab.closing[self._closer])
        result = sorted(out)
        if first:
            self._first = result
        return result
