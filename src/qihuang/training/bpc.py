"""Tokenizer-independent bits per character: total negative log-likelihood of a text (nats → bits) / characters.

Every token of each text is scored (the first one conditioned on a BOS/EOS context token), so two models with
different tokenizers are compared on exactly the same characters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any


def take_chars(texts: Iterable[str], max_chars: int | None) -> list[str]:
    """The texts in order, the last one cut so that at most `max_chars` characters are kept in total."""
    kept: list[str] = []
    total = 0
    for text in texts:
        if not text:
            continue
        if max_chars is not None and total + len(text) > max_chars:
            rest = max_chars - total
            if rest > 0:
                kept.append(text[:rest])
            break
        kept.append(text)
        total += len(text)
    return kept


def _context_token(tokenizer: Any) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _windows(ids: list[int], seq_len: int, stride: int) -> list[tuple[list[int], int]]:
    """Sliding windows over `ids` (ids[0] is the context token): (window, number of scored tokens at its end)."""
    if seq_len < 2:
        raise ValueError(f"seq_len {seq_len} < 2: a window needs a context token and a scored token")
    out: list[tuple[list[int], int]] = []
    prev_end = 1  # ids[0] itself is never scored
    begin = 0
    while prev_end < len(ids):
        # A window starts at least one token before the first token it scores: that token needs its context.
        start = min(begin, prev_end - 1)
        end = min(start + seq_len, len(ids))
        out.append((ids[start:end], end - prev_end))
        prev_end = end
        begin = start + stride
    return out


LOGITS_BUDGET_BYTES = 128 * 2**20
"""At most this much fp32 logits a forward: 8 windows of 512 tokens over SmolLM2's 49,152-token vocabulary would
be 805 MB — on top of a training stage's weights, gradients and moments, the stage's peak memory."""


def _vocab_size(model: Any) -> int:
    """Rows of the model's LM head (1 where it cannot say: no batch is then cut for memory)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", 1) or 1)


def _batches(windows: list[tuple[list[int], int]], batch_size: int,
             vocab: int) -> Iterable[list[tuple[list[int], int]]]:
    """Consecutive windows (sorted by length) in batches of at most `batch_size` whose logits fit the budget."""
    i = 0
    while i < len(windows):
        width = len(windows[min(i + batch_size, len(windows)) - 1][0])  # the longest of a full batch
        rows = max(1, min(batch_size, LOGITS_BUDGET_BYTES // max(width * vocab * 4, 1)))
        yield windows[i:i + rows]
        i += rows


def bits_per_char(model: Any, tokenizer: Any, texts: Iterable[str], max_chars: int | None = None,
                  seq_len: int = 512, stride: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Bits per character of `texts` under `model` (eval mode, no grad); windows of `seq_len` tokens moving by
    `stride` (default: seq_len, i.e. no overlap; a smaller stride gives later windows more context).

    Returns bpc, nll_bits, chars, tokens, tokens_per_char, seconds.
    """
    import torch

    t0 = time.time()
    stride = stride or seq_len
    if stride > seq_len:
        raise ValueError(f"stride {stride} > seq_len {seq_len}")
    kept = take_chars(texts, max_chars)
    ctx = _context_token(tokenizer)
    windows: list[tuple[list[int], int]] = []
    n_chars = n_tokens = 0
    for text in kept:
        ids = [ctx] + tokenizer(text, add_special_tokens=False)["input_ids"]
        n_chars += len(text)
        n_tokens += len(ids) - 1
        windows.extend(_windows(ids, seq_len, stride))
    windows.sort(key=lambda w: len(w[0]))  # similar lengths together: little padding
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nats = 0.0
    with torch.no_grad():
        for chunk in _batches(windows, batch_size, _vocab_size(model)):
            width = max(len(w) for w, _ in chunk)
            input_ids = torch.full((len(chunk), width), ctx, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            score = torch.zeros((len(chunk), width), dtype=torch.bool)
            for row, (w, n_scored) in enumerate(chunk):
                input_ids[row, :len(w)] = torch.tensor(w)
                attn[row, :len(w)] = 1
                score[row, len(w) - n_scored:len(w)] = True
            input_ids, attn, score = input_ids.to(device), attn.to(device), score.to(device)
            logits = model(input_ids=input_ids, attention_mask=attn, use_cache=False).logits
            for row in range(len(chunk)):  # one row at a time: fp32 log-probs of a whole batch are large
                nll = torch.nn.functional.cross_entropy(logits[row, :-1].float(), input_ids[row, 1:],
                                                        reduction="none")
                total_nats += float(nll[score[row, 1:]].sum())
    if was_training:
        model.train()
    bits = total_nats / math.log(2)
    return {
        "bpc": bits / max(n_chars, 1),
        "nll_bits": bits,
        "chars": n_chars,
        "tokens": n_tokens,
        "tokens_per_char": n_tokens / max(n_chars, 1),
        "seconds": round(time.time() - t0, 2),
    }
