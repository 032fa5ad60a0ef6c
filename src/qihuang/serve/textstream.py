"""Text side of streaming generation: incremental detokenization, stop-string matching and prompt-lookup
drafting (pure Python, no model)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qihuang.decoding import Repetition


class Detokenizer:
    """Incremental detokenization that never emits half a UTF-8 character (byte-level BPE and CJK)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        now = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """The text still held back; a character the stream ended in the middle of (a length cut) is dropped,
        not shown as U+FFFD."""
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        now = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return now[len(before):].rstrip("\ufffd")


class StopMatcher:
    """Holds back text that could start a stop string; reports where a stop string occurs."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, stopped)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def prompt_lookup_draft(ids: list[int], max_ngram: int, num_draft: int) -> list[int]:
    """Prompt-lookup drafting: continue the latest earlier occurrence of the sequence's last n-gram."""
    n_ids = len(ids)
    for n in range(min(max_ngram, n_ids - 1), 0, -1):
        tail = ids[-n:]
        for start in range(n_ids - n - 1, -1, -1):
            if ids[start:start + n] == tail:
                follow = ids[start + n:start + n + num_draft]
                if follow:
                    return follow
    return []


@dataclass
class Drafter:
    """Prompt-lookup drafting for one greedy stream, sized by how its drafts fare. A draft confirmed whole makes the
    next one 2 longer (up to `max_draft`), one cut short makes it what was confirmed plus one (Hugging Face assisted
    generation's schedule); a draft rejected at its first token pauses drafting for 1, 2, 4 … 16 steps. A rejected
    draft costs a forward over its length for nothing: an answer that does not copy its prompt (a bare question)
    made fixed 8-token drafts 18% slower than no drafting (RESULTS session 12)."""

    max_draft: int
    """Longest draft."""
    max_ngram: int
    """Longest n-gram looked up (`prompt_lookup_draft`)."""
    size: int = 0
    """Length of the next draft (0: start at `max_draft`)."""
    pause: int = 0
    """Steps left without drafting."""
    misses: int = 0
    """Drafts in a row rejected at their first token."""

    def __post_init__(self) -> None:
        self.size = self.size or self.max_draft

    def propose(self, ids: list[int], room: int) -> list[int]:
        """Draft tokens to verify after `ids` (at most `room`); [] to decode one token the plain way."""
        if self.pause > 0:
            self.pause -= 1
            return []
        return prompt_lookup_draft(ids, self.max_ngram, min(self.size, room))

    def record(self, drafted: int, accepted: int) -> None:
        """How a proposed draft fared: `accepted` of its `drafted` tokens confirmed."""
        self.size = min(self.max_draft, self.size + 2) if accepted == drafted else max(1, accepted + 1)
        self.misses = self.misses + 1 if accepted == 0 else 0
        self.pause = min(16, 2 ** (self.misses - 1)) if self.misses else 0


def verify_draft(logits: Any, draft: list[int], rep: Repetition) -> list[int]:
    """What greedy decoding (with `rep`'s repetition control) picks after the fed token and after each draft token:
    `logits` holds one row per fed position ([nxt, *draft]). `rep` is left as it was."""
    import torch

    if not rep.active:
        return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]
    best = []
    for j in range(len(draft) + 1):
        best.append(int(torch.argmax(rep.apply(logits[j]))))
        if j < len(draft):
            rep.push(draft[j])
    for _ in draft:
        rep.pop()
    return best


def accepted_prefix(draft: list[int], best: list[int]) -> int:
    """How many draft tokens greedy decoding confirms (the first mismatch ends them)."""
    n = 0
    while n < len(draft) and draft[n] == best[n]:
        n += 1
    return n
