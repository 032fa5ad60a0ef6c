"""Decoding shared by chat, serve and eval: repetition control on the *generated* tokens (a penalty and n-gram
blocking that leave copying from the prompt's passages alone) and batched generation (left-padded, KV cache)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qihuang.config import ConfigError

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")
"""End-of-turn tokens of the common chat templates: generation stops at any of them."""


@dataclass(frozen=True)
class DecodeParams:
    """Repetition control, applied to the tokens generated so far (never to the prompt, so an answer may quote
    its passages). Defaults measured on held-out-book QA with retrieval (`python benchmarks/rag_probe.py --decoding`,
    benchmarks/RESULTS.md, session 4): 4-gram blocking alone, no penalty."""

    repetition_penalty: float = 1.0
    """> 1 divides the positive logits (multiplies the negative ones) of tokens already generated (1.0 = off; off by
    default: on the demo's model 1.1 cost 3 ROUGE-L points and 1.3 destroyed the citations, while n-gram blocking
    alone removed every loop)."""
    no_repeat_ngram_size: int = 4
    """A generated n-gram of this many tokens is never generated again in the same answer (0 = off)."""

    def __post_init__(self) -> None:
        if not 1.0 <= self.repetition_penalty <= 2.0:
            raise ConfigError(f"repetition_penalty must be in [1, 2], got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0 or self.no_repeat_ngram_size == 1:
            raise ConfigError(f"no_repeat_ngram_size must be 0 (off) or >= 2, got {self.no_repeat_ngram_size}")

    @property
    def active(self) -> bool:
        """Whether any repetition control is on."""
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0


OFF = DecodeParams(repetition_penalty=1.0, no_repeat_ngram_size=0)
"""No repetition control."""


def banned_next(generated: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `generated` (n-gram blocking)."""
    if n < 2 or len(generated) < n:
        return []
    prefix = list(generated[len(generated) - n + 1:])
    out = []
    for i in range(len(generated) - n + 1):
        if list(generated[i:i + n - 1]) == prefix:
            out.append(int(generated[i + n - 1]))
    return out


def penalize(logits: Any, generated: Sequence[int], params: DecodeParams) -> Any:
    """`logits` (last dim = vocabulary; 1-D or 2-D with one row per generated sequence) adjusted for one
    sequence's `generated` tokens: repetition penalty, then banned n-gram completions at -inf. Returns a new tensor."""
    if not params.active or not generated:
        return logits
    import torch

    out = logits.clone()
    if params.repetition_penalty != 1.0:
        idx = torch.tensor(sorted(set(int(t) for t in generated)), dtype=torch.long, device=out.device)
        vals = out.index_select(-1, idx)
        vals = torch.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
        out.index_copy_(-1, idx, vals)
    banned = banned_next(generated, params.no_repeat_ngram_size)
    if banned:
        out[..., banned] = float("-inf")
    return out


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Ids generation stops at: the model's and tokenizer's EOS plus the chat templates' end-of-turn tokens."""
    eos: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    for src in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            eos.add(src)
        elif isinstance(src, (list, tuple)):
            eos.update(int(x) for x in src)
    vocab = tokenizer.get_vocab()
    for tok in STOP_TOKENS:
        if tok in vocab:
            tid = tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid >= 0:
                eos.add(tid)
    return frozenset(eos)


def _processor(prompt_width: int, params: DecodeParams) -> Any:
    """A transformers LogitsProcessor applying `penalize` to each row's tokens after `prompt_width`."""
    from transformers import LogitsProcessor

    class GeneratedRepetition(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            rows = input_ids[:, prompt_width:].tolist()
            return _stack([penalize(scores[b], row, params) for b, row in enumerate(rows)])

    return GeneratedRepetition()


def _stack(rows: list[Any]) -> Any:
    import torch

    return torch.stack(rows)


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                   params: DecodeParams | None = None) -> list[str]:
    """Greedy answers to rendered `prompts` (chat template applied), many per forward: prompts sorted by length,
    left-padded, decoded with the KV cache; repetition control on the generated tokens; an extended vocabulary's
    untrained byte fragments never generated; each row stops at its own end-of-turn token. Order is kept."""
    import torch

    from qihuang.template import encode_text
    from qihuang.tokenizer import suppressed_ids

    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    params = params or DecodeParams()
    stops = sorted(stop_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    encoded = [encode_text(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    suppress = list(suppressed_ids(tokenizer)) or None
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(encoded[i])
            ids[row, width - n:] = torch.tensor(encoded[i], dtype=torch.long)
            mask[row, width - n:] = 1
        processors = [_processor(width, params)] if params.active else []
        from transformers import LogitsProcessorList

        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stops or None,
                                 suppress_tokens=suppress, logits_processor=LogitsProcessorList(processors))
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            cut = next((j for j, t in enumerate(new) if t in stops), len(new))
            answers[i] = tokenizer.decode(new[:cut], skip_special_tokens=True).rstrip("\ufffd")
    return answers
