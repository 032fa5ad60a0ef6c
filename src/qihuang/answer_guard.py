"""What a user may see of a generated answer: a continuation that turns degenerate (a loop, punctuation noise) or
stops being supported by the passages it was given (invented text) is cut where it turns, and an answer left with
nothing of its own (noise, the question repeated) quotes its cited passage instead (an extractive fallback, marked as
the original text); a verbatim quotation of that passage is the answer's own (`quotes_source`). Serve, chat
and eval all pass answers through it (`rag.answer_chunks`, `evaluate.conditions.guard_answers`)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qihuang.retrieval import Passage
from qihuang.textmetrics import SENTENCE_MARKS, char_ngrams, content_chars, sentence_end_before

MIN_OWN_CHARS = 6
"""An answer with fewer CJK characters, letters or digits of its own (citations and the question's words left out)
than this has said nothing; it falls back to quoting the cited passage."""
HOLD_CHARS = 24
"""Characters a guarded stream holds back: a loop is recognised after three repeats of a unit of up to 8 characters,
so nothing of it reaches the client before it is cut."""
STEP_CHARS = 4
"""Granularity of the search for where an answer turns degenerate."""
QUOTE_CHARS = 80
"""Characters of the cited passage a fallback quotes (the sentence run matching the question best)."""
FALLBACK_LEAD = "原文："
"""What a fallback quote opens with, so a reader knows it is the source's text, not an explanation."""
MIN_SUPPORT = 0.5
"""Default least share of a sentence's character bigrams found in the question and passages (`Support`): measured on
the demo's held-out-book answers (`python benchmarks/guard_rescore.py --run runs/demo --support …`,
benchmarks/RESULTS.md session 8)."""


WINDOW_CHARS = 32
"""The latest characters checked for noise on their own (a long answer turning to noise is caught early)."""


def _degenerate(text: str) -> bool:
    from qihuang.evaluate.answers import is_degenerate, is_garbled

    if not text.strip():
        return False
    return is_degenerate(text) or (len(text) >= WINDOW_CHARS and is_garbled(text[-WINDOW_CHARS:]))


_RESTART = re.compile(r"(?<=[。！？；：:\n])\s*据《")


def restart_at(text: str) -> int | None:
    """Where an answer that opened with a citation starts over with another one (`据《甲》：…。\n据《甲》：…`, the
    trained opening written again after a sentence end, a line break or the opening's own colon): a model that lost
    its place, never a second source (those read 又据《乙》, 《乙》亦云). None when it does not."""
    if not text.startswith("据《"):
        return None
    m = _RESTART.search(text, 2)
    return m.start() if m else None


def clean_length(text: str) -> int:
    """Length of the part of `text` to keep: all of it when it neither starts over (`restart_at`) nor turns
    degenerate, else the text up to where it starts over, or up to the last sentence end before the point where it
    turns degenerate (searched in STEP_CHARS steps)."""
    restart = restart_at(text)
    if restart is not None:
        return clean_length(text[:restart].rstrip())
    if not _degenerate(text):
        return len(text)
    good = 0
    for end in range(STEP_CHARS, len(text) + STEP_CHARS, STEP_CHARS):
        if _degenerate(text[:end]):
            break
        good = min(end, len(text))
    end = sentence_end_before(text, good)
    return end if end is not None else good


def own_chars(answer: str, question: str) -> int:
    """Word characters of `answer` that are its own: citations left out, and the characters it shares with the
    question when it merely repeats it."""
    from qihuang.evaluate.answers import body_of, echoes_question
    from qihuang.textmetrics import WORD_CHAR

    if question and echoes_question(answer, question):
        return 0
    return len(WORD_CHAR.findall(body_of(answer)))


_QUOTATION = re.compile(r"\s*(?:原文(?:为|作)?[：:]?)?(?P<open>[“「『])(?P<text>[^“”「」『』]+)(?P<close>[”」』])[。；，！？]?\s*")


def quotes_source(body: str, cited: Passage) -> bool:
    """Whether `body` (an answer after its citation) is one quotation (“…”, 「…」 or 『…』, after an optional 原文：) of
    at least MIN_OWN_CHARS word characters that the cited passage holds word for word: the source confirming the
    citation. Such an answer says something of its own even where the question quotes the same words — the sentence
    an attribution question asks about, a fill-in question's sentence with the blank filled — and is kept rather
    than replaced by the fallback quote."""
    from qihuang.quotes import MARKS
    from qihuang.rag import clean_passage_text
    from qihuang.textmetrics import WORD_CHAR

    m = _QUOTATION.fullmatch(body)
    if m is None or MARKS[m["open"]] != m["close"] or len(WORD_CHAR.findall(m["text"])) < MIN_OWN_CHARS:
        return False
    return m["text"].strip() in clean_passage_text(cited.text)


_ENDS_SENTENCE = SENTENCE_MARKS.replace("\n", "")  # a quotation holds no line break
_ENDS_CLAUSE = "，、：,:"
_INTRODUCES = "：:"
"""A clause ending in one of these introduces what follows (书中写道：“…”)."""
OMITTED = "……"
"""What stands for the rest of a quotation closed at a clause that does not end its sentence."""


def close_quotation(text: str, start: int = 0) -> tuple[int, str]:
    """Where to end `text` when a quotation after `start` was left open — a generation that ran out of tokens
    inside it (a quotation only ends by its closing mark: `quotes.QuoteCopy`) — and what to close it with:
    (characters of `text` to keep, the closing to append). The quotation ends at its last finished clause: after a
    sentence end the mark closes it; after a clause mark (，、：) OMITTED stands for the rest; with no finished clause
    it is dropped, and so is a clause ending in a colon that introduced it (「…十二枚 汤方：“桂枝三两 芍」 → 「…十二枚」:
    nothing is left for it to introduce). `(len(text), "")` when every quotation is closed."""
    from qihuang.quotes import MARKS

    stack: list[tuple[int, str]] = []
    for i in range(start, len(text)):
        ch = text[i]
        if stack and ch == MARKS[stack[-1][1]]:
            stack.pop()
        elif ch in MARKS:
            stack.append((i, ch))
    if not stack:
        return len(text), ""
    at = stack[0][0]
    inner = text[at + 1:]
    end = max((k for k, ch in enumerate(inner) if ch in _ENDS_SENTENCE + _ENDS_CLAUSE), default=None)
    if end is None:
        before = text[:at].rstrip()
        if len(before) > start and before[-1] in _INTRODUCES:
            before = before[:_clause_start(before, start)].rstrip()
        return len(before), ""
    keep = at + 1 + end + (1 if inner[end] in _ENDS_SENTENCE else 0)
    return keep, ("" if inner[end] in _ENDS_SENTENCE else OMITTED) + _closers(text[at:keep])


_BRACKETS = {"（": "）", "(": ")", "〔": "〕", "［": "］", "[": "]"}
"""A note's opening bracket → its closing one: a quotation cut inside an interlinear note closes the note too."""


def _closers(kept: str) -> str:
    """The closing marks of the quotations and notes `kept` leaves open, innermost first."""
    from qihuang.quotes import MARKS

    pairs = {**MARKS, **_BRACKETS}
    open_: list[str] = []
    for ch in kept:
        if open_ and ch == pairs[open_[-1]]:
            open_.pop()
        elif ch in pairs:
            open_.append(ch)
    return "".join(pairs[ch] for ch in reversed(open_))


def lead_quote(passage: Passage, question: str) -> str:
    """The cited passage's sentences that match the question best (`relevance.quote_span`: the head of an entry the
    question names, else the best-matching sentence run), as a prompt shows text (`rag.clean_passage_text`) and
    without the marks of a clause before it: what a fallback quotes, and what an answer's first quotation copies
    (`quotes.Quotable.lead`)."""
    from qihuang.rag import clean_passage_text
    from qihuang.relevance import quote_span

    s, e = quote_span(passage, question, QUOTE_CHARS)
    return clean_passage_text(passage.text[s:e]).lstrip(_LEADING_MARKS).strip()


_LEADING_MARKS = "，。、；：？！,.;:?!）)」』” \t"


def fallback_quote(passage: Passage, question: str) -> str:
    """`原文：「…」` — `lead_quote`."""
    return f"{FALLBACK_LEAD}「{lead_quote(passage, question)}」"


@dataclass(frozen=True)
class Support:
    """What an answer's own sentences must be drawn from: the character bigrams of the question and of the passages
    it was shown. A sentence whose bigrams are less than `min_share` found there is unsupported — for a small model,
    almost always invented (titles of books that do not exist, the prompt's own instructions, made-up glosses)."""

    bigrams: frozenset[str]
    """Bigrams of word characters (CJK, letters, digits) of the question and the passages."""
    min_share: float
    """Least share of a sentence's bigrams found in `bigrams` for it to count as supported."""
    texts: tuple[str, ...] = ()
    """The passages' text as a prompt shows it (`rag.clean_passage_text`): what a sentence may begin by copying."""

    @classmethod
    def of(cls, question: str, sources: Sequence[Passage], min_share: float) -> Support | None:
        """The support of an answer to `question` shown `sources`; None when there is nothing to check against
        (no passages) or the check is off (`min_share` 0)."""
        from qihuang.rag import clean_passage_text

        if min_share <= 0 or not sources:
            return None
        return cls(frozenset(b for t in (question, *(p.text for p in sources)) for b in _bigrams(t)), min_share,
                   tuple(clean_passage_text(p.text) for p in sources))

    def share(self, sentence: str) -> float | None:
        """Share of `sentence`'s bigrams that are supported; None when it has too few to judge (under 2)."""
        grams = _bigrams(sentence)
        if len(grams) < 2:
            return None
        return sum(g in self.bigrams for g in grams) / len(grams)

    def supported_length(self, text: str) -> int:
        """Length of the part of `text` before its first unsupported sentence (all of it when every sentence is
        supported). A sentence that opens by copying a passage (at least MIN_OWN_CHARS word characters, with or
        without quote marks) and goes on without a mark is two: the copy, and what is glued to it, judged alone
        (「桂枝三两 … 大枣十二枚 汤方（桂枝三头）原文」 keeps the copy)."""
        for m in _SENTENCE.finditer(text):
            glued = self._copied(m.group())
            if glued:
                share = self.share(m.group()[glued:])
                if share is not None and share < self.min_share:
                    return m.start() + glued
                continue
            share = self.share(m.group())
            if share is not None and share < self.min_share:
                return m.start()
        return len(text)

    def _copied(self, sentence: str) -> int:
        """Where the text glued to a sentence's opening copy of a passage starts (after the copy and any marks
        closing it); 0 when the sentence does not open with such a copy or nothing but marks follows it."""
        from qihuang.textmetrics import WORD_CHAR

        start = len(sentence) - len(sentence.lstrip(_OPENING))
        end = start
        while end < len(sentence) and any(sentence[start:end + 1] in t for t in self.texts):
            end += 1
        if len(WORD_CHAR.findall(sentence[start:end])) < MIN_OWN_CHARS:
            return 0
        end += len(sentence[end:]) - len(sentence[end:].lstrip(_CLOSING))
        rest = sentence[end:]
        return end if rest and rest[0] not in _ENDS_SENTENCE + _ENDS_CLAUSE and WORD_CHAR.search(rest) else 0


_OPENING = " \t\n“「『（(：:"
_CLOSING = "”」』）)"


_SENTENCE = re.compile(f"[^{SENTENCE_MARKS}]+[{SENTENCE_MARKS}]*|[{SENTENCE_MARKS}]+")


def _bigrams(text: str) -> list[str]:
    """Character bigrams of `text`'s word characters (`textmetrics.char_ngrams`)."""
    return char_ngrams(content_chars(text), 2)


@dataclass
class Guarded:
    """A guarded answer and what the guard did."""

    text: str
    """The answer a user sees."""
    cut: bool = False
    """A degenerate continuation was cut off."""
    closed: str = ""
    """What closed a quotation the generation left open (`close_quotation`: OMITTED and the marks), or OMITTED in
    place of the clause mark an answer stopped after (`，`, `、`, `：`: cut by its token budget); "" for none."""
    fallback: bool = False
    """The answer quotes its cited passage instead of saying nothing of its own."""
    unsupported: bool = False
    """The cut (`cut` is set too) was at a sentence its passages do not support."""


def guard_answer(answer: str, question: str, cited: Passage | None, prefix: str = "",
                 support: Support | None = None) -> Guarded:
    """The answer users see for a finished generation `answer` (which opens with `prefix`, the citation); with
    `support`, cut before the first sentence of its own that the passages do not support."""
    keep = clean_length(answer)
    text = answer if keep == len(answer) else answer[:keep].rstrip()
    out = Guarded(text, cut=keep < len(answer))
    if support is not None:
        start = len(prefix) if text.startswith(prefix) else 0
        own = support.supported_length(text[start:])
        if start + own < len(text):
            out.text = text = text[:start + own].rstrip() if own else text[:start]
            out.cut = out.unsupported = True
    start = len(prefix) if text.startswith(prefix) else 0
    keep, out.closed = close_quotation(text, start)
    if keep < len(text) or out.closed:
        out.text = text = text[:keep] + out.closed
    if not out.closed and len(text) > start and text[-1] in _ENDS_CLAUSE:  # stopped after a clause mark: says so
        out.closed = OMITTED
        out.text = text = text[:-1] + OMITTED
    body = text[start:]
    if cited is not None and own_chars(body, question) < MIN_OWN_CHARS and not quotes_source(body, cited):
        out.text, out.fallback = prefix + fallback_quote(cited, question), True  # what little was left: noise
    return out


def _clause_start(text: str, start: int) -> int:
    """Where the last clause of `text` (after `start`, its ending mark not counted) begins: just past the sentence
    or clause mark, closing quotation mark or bracket, or space before it — `start` when there is none."""
    from qihuang.quotes import MARKS

    bounds = _ENDS_SENTENCE + _ENDS_CLAUSE + "".join(MARKS.values()) + "".join(_BRACKETS.values())
    k = len(text) - 2
    while k >= start and text[k] not in bounds and not text[k].isspace():
        k -= 1
    return max(k + 1, start)


def guard_stream(chunks: Iterator[Any], question: str, cited: Passage | None, prefix: str,
                 stop: threading.Event, make_chunk: Callable[[str, Any, str | None], Any],
                 hold: int | None = HOLD_CHARS, support: Support | None = None) -> Iterator[Any]:
    """Pass an answer's chunks through, holding back the last HOLD_CHARS generated characters (the opening `prefix`
    goes out at once; with `support`, also the sentence being written, until it ends and is judged); when the text
    turns degenerate or writes an unsupported sentence, set `stop` (the engine ends the generation), cut it there
    and finish as `guard_answer` would.
    `make_chunk(text, last_chunk, finish_reason)` builds an outgoing chunk. `hold=None` holds everything back
    until the end (a client that is not streaming gets exactly `guard_answer` of what was generated)."""
    full, sent, last = "", 0, None
    for chunk in chunks:
        last = chunk
        full += chunk.text
        if turned(full, prefix, support):
            stop.set()
            break
        start = len(prefix) if full.startswith(prefix) else 0  # the opening is ours
        finished = _last_sentence_end(full, start)  # the sentences written to their end
        held = len(full) if hold is None else min(len(full), hold)
        safe = max(len(full) - held, start)
        if support is not None:
            safe = min(safe, finished)
        if safe > sent and full[sent:safe].strip():  # whitespace waits for the text after it
            yield make_chunk(full[sent:safe], chunk, None)
            sent = safe
        if chunk.finish_reason is not None:
            break
    close = getattr(chunks, "close", None)
    if close is not None:
        close()  # a generation cut short ends here, its batch row freed
    final = guard_answer(full, question, cited, prefix, support)
    if final.text.startswith(full[:sent]):
        rest = final.text[sent:]
    else:  # the cut fell inside what was sent already: finish with the fallback's quote, or close the quotation
        rest = fallback_quote(cited, question) if final.fallback and cited is not None else final.closed
    reason = "stop" if final.cut else (last.finish_reason if last is not None else "stop")
    yield make_chunk(rest, last, reason or "stop")


def turned(full: str, prefix: str, support: Support | None) -> bool:
    """Whether a generation `full` (opening with `prefix`, which is ours) has turned where the guard cuts: it is
    degenerate, starts over (`restart_at`) or, with `support`, holds a finished sentence of its own the passages do
    not support. A stream stops there (`guard_stream`), and so does the eval's batch decoding (`stop_when`): what
    follows would be cut."""
    start = len(prefix) if full.startswith(prefix) else 0
    finished = _last_sentence_end(full, start)  # the sentences written to their end
    return _degenerate(full) or restart_at(full) is not None or (
        support is not None and support.supported_length(full[start:finished]) < finished - start)


def stop_when(prefix: str, support: Support | None) -> Callable[[str], bool]:
    """`turned` for the text a model generates after `prefix`: a decoder's per-answer stop test."""
    return lambda generated: turned(prefix + generated, prefix, support)


def _last_sentence_end(text: str, start: int) -> int:
    """Index just past the last sentence end of `text` after `start` (`start` when there is none)."""
    end = sentence_end_before(text, len(text), start)
    return end if end is not None else start
