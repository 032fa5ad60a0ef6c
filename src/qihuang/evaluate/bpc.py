"""Bits per character on held-out text: total negative log-likelihood (in bits) divided by the character count,
so models with different tokenizers compare fairly. Long passages are scored with a sliding window and stride."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qihuang.runs import read_jsonl


def read_passages(path: Path, max_chars: int) -> list[dict[str, Any]]:
    """Held-out passages (`text`, `id`, `book`) up to `max_chars` characters in total (0 = all).

    Books take turns (first passage of each book in file order, then the second, ...), so a small budget still
    covers many books; the last passage taken is cut to fit the budget exactly.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: held-out passages not found")
    by_book: dict[str, list[dict[str, Any]]] = {}
    for lineno, rec in enumerate(read_jsonl(path), 1):
        text = str(rec.get("text") or "")
        if text.strip():
            book = str(rec.get("book") or "?")
            by_book.setdefault(book, []).append({"id": rec.get("id", f"record{lineno}"), "book": book, "text": text})
    if not by_book:
        raise ValueError(f"{path}: no passage with a non-empty `text` field")
    out: list[dict[str, Any]] = []
    used = 0
    queues = list(by_book.values())
    for rank in range(max(len(q) for q in queues)):
        for queue in queues:
            if rank >= len(queue):
                continue
            if max_chars and used >= max_chars:
                return out
            p = dict(queue[rank])
            if max_chars:
                p["text"] = p["text"][: max_chars - used]
            used += len(p["text"])
            out.append(p)
    return out


def evaluate_bpc(model: Any, tokenizer: Any, heldout: Path, max_chars: int, window: int, stride: int,
                 batch_size: int = 8) -> dict[str, Any]:
    """bpc over the first `max_chars` characters of a held-out JSONL, overall and per book.

    Scoring is `qihuang.training.bpc.bits_per_char` (shared with #4's pretraining eval): every token of each passage
    is scored once, windows of `window` tokens moving by `stride`; bits are summed and divided by characters.
    """
    from qihuang.training.bpc import bits_per_char

    if not 1 <= stride < window:
        raise ValueError(f"need 1 <= stride < window (got stride {stride}, window {window}): with stride == window "
                         "the first token of each later window would have no context")
    passages = read_passages(heldout, max_chars)
    by_book: dict[str, list[str]] = {}
    for p in passages:
        by_book.setdefault(str(p["book"] or "?"), []).append(p["text"])
    bits = 0.0
    chars = tokens = 0
    seconds = 0.0
    books: dict[str, float] = {}
    for book, texts in by_book.items():
        r = bits_per_char(model, tokenizer, texts, None, seq_len=window, stride=stride, batch_size=batch_size)
        bits += r["nll_bits"]
        chars += r["chars"]
        tokens += r["tokens"]
        seconds += r["seconds"]
        books[book] = round(r["bpc"], 4)
    return {
        "bpc": bits / chars,
        "bits_per_token": bits / max(tokens, 1),
        "tokens_per_char": tokens / chars,
        "chars": chars,
        "tokens": tokens,
        "passages": len(passages),
        "window": window,
        "stride": stride,
        "seconds": round(seconds, 2),
        "by_book": books,
        "file": str(heldout),
    }
