"""Training text: passages + a general-text mix, tokenized and packed into fixed-length blocks.

Documents end with EOS and are concatenated; a block holds `seq_len + 1` tokens (inputs and shifted targets).
Position ids restart at every document start, so HF's SDPA/eager/flash attention keeps attention inside a
document; the first token of a document is never a target (it would be predicted across documents).
The order of blocks is a pure function of (seed, step), which is what makes resume and DDP exact.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = -100


def read_texts(path: Path, field_name: str = "text") -> list[str]:
    """The `text` of every record of a JSONL file (empty ones skipped)."""
    from qihuang.runs import read_jsonl

    return [str(r[field_name]) for r in read_jsonl(Path(path)) if r.get(field_name)]


def _general_record_text(rec: dict[str, Any]) -> str:
    if "conversations" in rec:
        return "\n".join(str(t.get("value", "")) for t in rec["conversations"])
    if "text" in rec:
        return str(rec["text"])
    parts = [rec.get("instruction", ""), rec.get("input", ""), rec.get("output", "")]
    return "\n".join(str(p) for p in parts if p)


def read_general(path: Path) -> list[str]:
    """General text from an Alpaca JSON list, or JSONL (Alpaca, ShareGPT `conversations`, or `text`)."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        records = json.loads(raw)
    else:
        records = [json.loads(line) for line in raw.splitlines() if line.strip()]
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of records")
    return [t for t in (_general_record_text(r).strip() for r in records) if t]


def mix_documents(domain: list[str], general: list[str], general_ratio: float, seed: int,
                  max_chars: int | None = None) -> tuple[list[str], dict[str, int]]:
    """Shuffle the domain documents (cut at `max_chars`), add general documents so that they make up about
    `general_ratio` of all characters, and shuffle the mix. Returns (documents, character counts)."""
    rng = random.Random(seed)
    docs = list(domain)
    rng.shuffle(docs)
    if max_chars is not None:
        kept, total = [], 0
        for d in docs:
            if total >= max_chars:
                break
            kept.append(d)
            total += len(d)
        docs = kept
    domain_chars = sum(len(d) for d in docs)
    general_chars = 0
    if general_ratio > 0 and general:
        want = domain_chars * general_ratio / (1.0 - general_ratio)
        pool = list(general)
        rng.shuffle(pool)
        for g in pool:
            if general_chars >= want:
                break
            docs.append(g)
            general_chars += len(g)
    rng.shuffle(docs)
    return docs, {"domain_chars": domain_chars, "general_chars": general_chars}


@dataclass
class PackedData:
    """A token stream cut into blocks of `seq_len + 1` tokens (consecutive blocks share one token)."""

    stream: np.ndarray
    """All tokens, documents separated by EOS."""
    doc_start: np.ndarray
    """True where a document starts."""
    seq_len: int
    seed: int
    _perms: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_blocks(self) -> int:
        return max((len(self.stream) - 1) // self.seq_len, 0)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
        return self._perms[epoch]

    def sample_ids(self, start: int, count: int) -> list[int]:
        """Block ids of global samples start..start+count-1 (a fresh permutation each epoch)."""
        out = []
        for g in range(start, start + count):
            epoch, pos = divmod(g, self.n_blocks)
            out.append(int(self._perm(epoch)[pos]))
        return out

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, position_ids, targets) of block `b`, each `seq_len` long."""
        lo = b * self.seq_len
        toks = self.stream[lo:lo + self.seq_len + 1].astype(np.int64)
        starts = self.doc_start[lo:lo + self.seq_len + 1].copy()
        inputs, targets = toks[:-1], toks[1:].copy()
        targets[starts[1:]] = IGNORE
        s = starts[:-1].copy()
        s[0] = True
        ar = np.arange(self.seq_len)
        last = np.maximum.accumulate(np.where(s, ar, 0))
        return inputs, ar - last, targets

    def batch(self, block_ids: list[int]) -> dict[str, Any]:
        """Tensors for a micro-batch: input_ids, position_ids, targets (already shifted)."""
        import torch

        parts = [self.block(b) for b in block_ids]
        return {
            "input_ids": torch.from_numpy(np.stack([p[0] for p in parts])),
            "position_ids": torch.from_numpy(np.stack([p[1] for p in parts])),
            "targets": torch.from_numpy(np.stack([p[2] for p in parts])),
        }

    def n_targets(self, block_ids: list[int]) -> int:
        """Number of scored targets in these blocks."""
        return int(sum((self.block(b)[2] != IGNORE).sum() for b in block_ids))


def _batched(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def pack_documents(tokenizer: Any, docs: list[str], seq_len: int, seed: int) -> PackedData:
    """Tokenize `docs` (each followed by EOS) and pack them; raises ValueError if not even one block fits."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no EOS token: cannot separate packed documents")
    chunks: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    for group in _batched(docs, 256):
        for ids in tokenizer(group, add_special_tokens=False)["input_ids"]:
            arr = np.asarray(list(ids) + [eos], dtype=np.int32)
            st = np.zeros(len(arr), dtype=bool)
            st[0] = True
            chunks.append(arr)
            starts.append(st)
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    doc_start = np.concatenate(starts) if starts else np.zeros(0, dtype=bool)
    data = PackedData(stream, doc_start, seq_len, seed)
    if data.n_blocks == 0:
        raise ValueError(f"only {len(stream)} tokens of training text: fewer than one block of {seq_len + 1}")
    return data
