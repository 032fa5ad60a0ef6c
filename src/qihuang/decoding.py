"""Decoding shared by chat, serve and eval: repetition control on the *generated* tokens (a penalty and n-gram
blocking that leave copying from the prompt's passages alone) and batched generation (left-padded, KV cache)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qihuang.config import ConfigError, check_ranges

if TYPE_CHECKING:
    from qihuang.quotes import Quotable, QuoteCopy

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")
"""End-of-turn tokens of the common chat templates: generation stops at any of them."""


@dataclass(frozen=True)
class DecodeParams:
    """Repetition control, applied to the tokens generated so far (never to the prompt, so an answer may quote
    its passages). Defaults measured on held-out-book QA with retrieval (`python benchmarks/rag_probe.py --decoding`,
    benchmarks/RESULTS.md, session 7, with degeneration that counts noise as well as loops): penalty 1.1 + 8-gram
    blocking — ROUGE-L 34.0 and 2.1% degenerate on the demo's model, against 30.3 and 37.5% for the session-4
    default (4-gram blocking alone, which turned loops into noise: with byte-level tokens, ~2 per CJK character,
    it forbade repeating any two-character word)."""

    repetition_penalty: float = 1.1
    """> 1 divides the positive logits (multiplies the negative ones) of tokens already generated (1.0 = off)."""
    no_repeat_ngram_size: int = 8
    """A generated n-gram of this many tokens (~4 CJK characters with a byte-level vocabulary) is never generated
    again in the same answer (0 = off)."""

    def __post_init__(self) -> None:
        check_ranges("decoding", self, repetition_penalty=(1, 2, False), no_repeat_ngram_size=(0, None, False))
        if self.no_repeat_ngram_size == 1:
            raise ConfigError("decoding.no_repeat_ngram_size: must be 0 (off) or >= 2, got 1")

    @property
    def active(self) -> bool:
        """Whether any repetition control is on."""
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0


OFF = DecodeParams(repetition_penalty=1.0, no_repeat_ngram_size=0)
"""No repetition control."""


class Repetition:
    """One sequence's generated tokens as incremental repetition-control state: how often each token was generated
    (the penalty's set) and, for n-gram blocking, a table from each (n-1)-gram to the tokens that followed it, so
    the banned next tokens are one lookup instead of a scan of the whole answer. `push`/`pop` cost O(n) a token.
    With `quotes`, an open quotation may only copy the passages shown (`qihuang.quotes.QuoteCopy`)."""

    def __init__(self, params: DecodeParams, quotes: QuoteCopy | None = None) -> None:
        self.params = params
        self.quotes = quotes
        self.n = params.no_repeat_ngram_size if params.no_repeat_ngram_size >= 2 else 0
        self.tokens: list[int] = []
        self.counts: dict[int, int] = {}
        self.follow: dict[tuple[int, ...], dict[int, int]] = {}

    def push(self, token: int) -> None:
        """Append one generated token."""
        token = int(token)
        self.tokens.append(token)
        if self.quotes is not None:
            self.quotes.push(token)
        if not self.params.active:
            return
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.n and len(self.tokens) >= self.n:
            after = self.follow.setdefault(tuple(self.tokens[-self.n:-1]), {})
            after[token] = after.get(token, 0) + 1

    def pop(self) -> int:
        """Remove the last token pushed (undoes `push`, e.g. after checking draft tokens)."""
        token = self.tokens[-1]
        if self.quotes is not None:
            self.quotes.pop()
        if self.params.active:
            if self.n and len(self.tokens) >= self.n:
                key = tuple(self.tokens[-self.n:-1])
                after = self.follow[key]
                after[token] -= 1
                if not after[token]:
                    del after[token]
                    if not after:
                        del self.follow[key]
            self.counts[token] -= 1
            if not self.counts[token]:
                del self.counts[token]
        self.tokens.pop()
        return token

    def banned(self) -> list[int]:
        """Tokens that would complete an n-gram already generated (n-gram blocking), ascending."""
        if not self.n or len(self.tokens) < self.n:
            return []
        return sorted(self.follow.get(tuple(self.tokens[len(self.tokens) - self.n + 1:]), ()))

    @property
    def active(self) -> bool:
        """Whether `apply` may change logits (repetition control on, or quotations to keep verbatim)."""
        return self.params.active or self.quotes is not None

    def apply(self, logits: Any) -> Any:
        """`logits` (last dim = vocabulary; 1-D or 2-D) with the repetition penalty on the generated tokens and the
        banned n-gram completions at -inf — or, inside a quotation, every token that does not copy the passages at
        -inf instead (a quotation may repeat what the answer said; it cannot loop past its span's end), unless that
        leaves nothing; `logits` itself (not a copy) when nothing applies."""
        allowed = self.quotes.allowed() if self.quotes is not None else None
        if not allowed:
            return self._repeat(logits)
        import torch

        idx = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        kept = logits.index_select(-1, idx)
        if bool(torch.isinf(kept).all()):
            return self._repeat(logits)
        return torch.full_like(logits, float("-inf")).index_copy_(-1, idx, kept)

    def _repeat(self, logits: Any) -> Any:
        """`apply`'s repetition control alone."""
        if not self.params.active or not self.tokens:
            return logits
        banned = self.banned()
        penalty = self.params.repetition_penalty
        if penalty == 1.0 and not banned:
            return logits
        import torch

        out = logits.clone()
        if penalty != 1.0:
            idx = torch.tensor(sorted(self.counts), dtype=torch.long, device=out.device)
            vals = out.index_select(-1, idx)
            vals = torch.where(vals > 0, vals / penalty, vals * penalty)
            out.index_copy_(-1, idx, vals)
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


def logits_processor(prompt_width: int, params: DecodeParams,
                     quotes: Sequence[QuoteCopy | None] | None = None) -> Any:
    """A transformers LogitsProcessor for one `model.generate` call: a `Repetition` per row over its tokens after
    `prompt_width` (with row b's verbatim quotations when `quotes[b]` is given, fresh: no token pushed), fed the new
    tokens at each step — what the engine's token loop does, so both decode the same tokens."""
    import torch
    from transformers import LogitsProcessor

    states: list[Repetition] = []

    class GeneratedRepetition(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            rows = input_ids[:, prompt_width:].tolist()
            if not states:
                states.extend(Repetition(params, quotes=q) for q in (quotes or [None] * len(rows)))
            for rep, row in zip(states, rows, strict=True):
                for tok in row[len(rep.tokens):]:
                    rep.push(tok)
            return torch.stack([rep.apply(scores[b]) for b, rep in enumerate(states)])

    return GeneratedRepetition()


def suppress_mask(ids: Sequence[int]) -> Callable[[Any], Any]:
    """logits → logits with the token `ids` at -inf (last dimension = vocabulary); the identity without ids. For an
    extended vocabulary's untrained byte fragments (`tokenizer.suppressed_ids`), which would decode to U+FFFD."""
    if not ids:
        return lambda logits: logits
    import torch

    cached: dict[Any, Any] = {}

    def mask(logits: Any) -> Any:
        idx = cached.get(logits.device)
        if idx is None:
            idx = cached[logits.device] = torch.tensor(list(ids), dtype=torch.long, device=logits.device)
        return logits.index_fill(-1, idx, float("-inf"))

    return mask


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                   params: DecodeParams | None = None, progress: Callable[[int, int], None] | None = None,
                   lookup_draft: int = 8, quotes: Sequence[Quotable | None] | None = None,
                   until: Sequence[Callable[[str], bool] | None] | None = None, batch_tokens: int = 0) -> list[str]:
    """Greedy answers to rendered `prompts` (chat template applied), decoded by the server's continuous batcher
    (`serve.batching.BatchDecoder`): up to `batch_size` rows per forward over a left-padded KV cache (and, with
    `batch_tokens`, no more rows than keep rows x (prompt + max_new_tokens) within it), a finished
    row's place taken by the next prompt at once (no row waits for the longest of a fixed batch); repetition
    control on the generated tokens; an extended vocabulary's untrained byte fragments never generated; each row
    stops at its own end-of-turn token; a row left alone drafts by prompt lookup (exact); the opening all prompts
    share (system prompt, passages header: `serve.kvcache.common_prefix`) is run once. Order is kept;
    `progress(done, total)` is called as answers finish. A model whose KV cache cannot be batched this way
    (sliding-window layers) goes through `model.generate` in fixed batches instead. `quotes[i]`: what a quotation
    answer i opens copies verbatim (`qihuang.quotes`: the passages prompt i shows, the first quotation's lead).
    `until[i](text generated so far)`: True ends answer i there (`answer_guard.stop_when`: where the guard would cut,
    as a served stream stops; the fixed-batch path generates to the end instead)."""
    from qihuang.serve.batching import BatchDecoder, Request, batchable
    from qihuang.serve.fastpath import cache_kwarg
    from qihuang.serve.kvcache import common_prefix
    from qihuang.serve.textstream import Drafter
    from qihuang.template import encode_text
    from qihuang.tokenizer import suppressed_ids

    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    params = params or DecodeParams()
    for name, per in (("quotes", quotes), ("until", until)):
        if per is not None and len(per) != len(prompts):
            raise ValueError(f"{name}: {len(per)} entries for {len(prompts)} prompts")
    if not batchable(model):
        return _generate_fixed(model, tokenizer, prompts, max_new_tokens, batch_size, params, progress, quotes)
    mask = suppress_mask(suppressed_ids(tokenizer))
    decoder = BatchDecoder(model, stop_token_ids(model, tokenizer), mask, cache_kwarg(model), max_batch=batch_size,
                           max_tokens=batch_tokens)

    def pick(logits: Any, rep: Repetition) -> int:
        return int(rep.apply(logits).argmax())

    encoded = [encode_text(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar widths prefill together
    decoder.share_prefix(common_prefix(encoded))  # the system prompt and header: computed once, not per prompt

    def request(i: int) -> Request:
        rep = Repetition(params, quotes=quote_copy(tokenizer, quotes[i] if quotes else None))
        test = until[i] if until else None
        done = (lambda: test(tokenizer.decode(rep.tokens, skip_special_tokens=True).rstrip("\ufffd"))) if test \
            else (lambda: False)
        return Request(encoded[i], pick, max_new_tokens, done, rep,
                       drafter=Drafter(lookup_draft, 3) if lookup_draft > 0 else None)

    tokens = decoder.run([request(i) for i in order], progress)
    answers: list[str] = [""] * len(prompts)
    for i, toks in zip(order, tokens, strict=True):
        answers[i] = tokenizer.decode(toks, skip_special_tokens=True).rstrip("\ufffd")
    return answers


def quote_copy(tokenizer: Any, quotable: Quotable | None) -> QuoteCopy | None:
    """The verbatim-quotation state of one answer whose quotations copy `quotable` (None: nothing to copy)."""
    from qihuang.quotes import QuoteCopy, quote_vocab

    return QuoteCopy(quote_vocab(tokenizer), quotable.sources, quotable.lead) if quotable else None


def _generate_fixed(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                    params: DecodeParams, progress: Callable[[int, int], None] | None,
                    quotes: Sequence[Quotable | None] | None = None) -> list[str]:
    """`generate_batch` through `model.generate`: fixed left-padded batches sorted by length, KV cache."""
    import torch
    from transformers import LogitsProcessorList

    from qihuang.template import encode_text
    from qihuang.tokenizer import suppressed_ids

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
        copies = [quote_copy(tokenizer, quotes[i]) for i in chunk] if quotes else []
        processors = [logits_processor(width, params, copies)] if params.active or any(copies) else []

        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stops or None,
                                 suppress_tokens=suppress, logits_processor=LogitsProcessorList(processors))
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            cut = next((j for j, t in enumerate(new) if t in stops), len(new))
            answers[i] = tokenizer.decode(new[:cut], skip_special_tokens=True).rstrip("\ufffd")
        if progress:
            progress(start + len(chunk), len(order))
    return answers
