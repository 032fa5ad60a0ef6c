"""What a user may see of a generated answer: a continuation that turns degenerate (a loop, punctuation noise) is cut
where it turns, and an answer left with nothing of its own quotes its cited passage instead (an extractive fallback,
marked as the original text). Serve, chat and eval all pass answers through it (`rag.answer_chunks`,
`evaluate.conditions.generate`)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from qihuang.retrieval import Passage, best_span

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
_SENTENCE_END = re.compile(r"[。！？；!?;\n]")


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
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, good)]
    return ends[-1] if ends else good


def own_chars(answer: str, question: str) -> int:
    """Word characters of `answer` that are its own: citations left out, and the characters it shares with the
    question when it merely repeats it."""
    from qihuang.evaluate.answers import WORD_CHAR, body_of, echoes_question

    if question and echoes_question(answer, question):
        return 0
    return len(WORD_CHAR.findall(body_of(answer)))


def fallback_quote(passage: Passage, question: str) -> str:
    """`原文：「…」` — the cited passage's sentences that match the question best."""
    s, e = best_span(passage.text, question, QUOTE_CHARS)
    return f"{FALLBACK_LEAD}「{passage.text[s:e].strip()}」"


@dataclass
class Guarded:
    """A guarded answer and what the guard did."""

    text: str
    """The answer a user sees."""
    cut: bool = False
    """A degenerate continuation was cut off."""
    fallback: bool = False
    """The answer quotes its cited passage instead of saying nothing of its own."""


def guard_answer(answer: str, question: str, cited: Passage | None, prefix: str = "") -> Guarded:
    """The answer users see for a finished generation `answer` (which opens with `prefix`, the citation)."""
    keep = clean_length(answer)
    text = answer if keep == len(answer) else answer[:keep].rstrip()
    out = Guarded(text, cut=keep < len(answer))
    if cited is not None and own_chars(text[len(prefix):] if text.startswith(prefix) else text, question) \
            < MIN_OWN_CHARS:
        out.text, out.fallback = prefix + fallback_quote(cited, question), True  # what little was left: noise
    return out


def guard_stream(chunks: Iterator[Any], question: str, cited: Passage | None, prefix: str,
                 stop: threading.Event, make_chunk: Callable[[str, Any, str | None], Any],
                 hold: int | None = HOLD_CHARS) -> Iterator[Any]:
    """Pass an answer's chunks through, holding back the last HOLD_CHARS generated characters (the opening `prefix`
    goes out at once); when the text turns
    degenerate, set `stop` (the engine ends the generation), cut it there and finish as `guard_answer` would.
    `make_chunk(text, last_chunk, finish_reason)` builds an outgoing chunk. `hold=None` holds everything back
    until the end (a client that is not streaming gets exactly `guard_answer` of what was generated)."""
    full, sent, last = "", 0, None
    for chunk in chunks:
        last = chunk
        full += chunk.text
        if _degenerate(full) or restart_at(full) is not None:
            stop.set()
            break
        held = len(full) if hold is None else min(len(full), hold)
        safe = max(len(full) - held, len(prefix) if full.startswith(prefix) else 0)  # the opening is ours
        if safe > sent:
            yield make_chunk(full[sent:safe], chunk, None)
            sent = safe
        if chunk.finish_reason is not None:
            break
    close = getattr(chunks, "close", None)
    if close is not None:
        close()  # a generation cut short ends here, its batch row freed
    final = guard_answer(full, question, cited, prefix)
    if final.text.startswith(full[:sent]):
        rest = final.text[sent:]
    else:  # the cut fell inside what was sent already: finish with the fallback's quote alone
        rest = fallback_quote(cited, question) if final.fallback and cited is not None else ""
    reason = "stop" if final.cut else (last.finish_reason if last is not None else "stop")
    yield make_chunk(rest, last, reason or "stop")
