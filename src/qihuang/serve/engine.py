"""Generation engine (no HTTP): loads a model directory, renders the shared chat template and generates with
streaming, stop sequences, sampling and a greedy fast path (KV cache reuse + prompt-lookup drafting, exact)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qihuang.decoding import DecodeParams, Repetition, quote_copy
from qihuang.quotes import Quotable
from qihuang.serve.textstream import Detokenizer, Drafter, StopMatcher, accepted_prefix, verify_draft

MIN_TEMPERATURE = 1e-4
"""Temperatures below this decode greedily (dividing logits by 1e-40 overflows to inf/NaN probabilities)."""


class EngineError(RuntimeError):
    """A request the engine cannot serve (e.g. prompt longer than the model's context)."""


class PromptTooLong(EngineError):
    """The rendered prompt plus max_new_tokens does not fit the model's context window."""


def model_label(path: Path) -> str:
    """The served model name: `<run>-<stage>` for a stage's `model/` folder, else the folder name."""
    return f"{path.parent.parent.name}-{path.parent.name}" if path.name == "model" else path.name


def resolve_model_dir(spec: str | Path) -> Path:
    """A model dir, preset name or run dir (`runs/demo` → its final model, `qihuang.runs.RunDir.final_model`)."""
    from qihuang.models import prepare_model
    from qihuang.runs import RunDir

    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        return RunDir(path).final_model()
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        return path
    return prepare_model(str(spec))


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]], defaults: dict[str, Any] | None = None) -> str:
    """The serving prompt through the one chat template shared with training (`qihuang.template`), with the
    trained default system prompt put first when the conversation has none."""
    from qihuang.template import render_prompt as template_render
    from qihuang.template import with_defaults

    return str(template_render(tokenizer, with_defaults(list(messages), defaults or {}), add_generation_prompt=True))


@dataclass
class PromptCodec:
    """A served model's prompt side, shared by every engine: the training chat template (with the model's saved
    defaults, e.g. its system prompt) and the tokenizer."""

    tokenizer: Any
    chat_defaults: dict[str, Any] = field(default_factory=dict)

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt text for a conversation, ending with the assistant turn's opening."""
        return render_prompt(self.tokenizer, messages, self.chat_defaults)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt (the template already holds the special tokens)."""
        from qihuang.template import encode_text

        return encode_text(self.tokenizer, prompt)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` (usage accounting)."""
        return len(self.encode(text))


@dataclass
class SamplingParams:
    """Decoding settings of one request."""

    max_new_tokens: int = 256
    """Upper bound on generated tokens."""
    temperature: float = 0.0
    """Below MIN_TEMPERATURE (e.g. 0) → greedy; otherwise softmax temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends before the first occurrence (not included in the output)."""
    seed: int | None = None
    """Seed for sampling (None → nondeterministic)."""
    repetition_penalty: float = DecodeParams.repetition_penalty
    """Penalty on tokens already generated in this answer (1.0 = off; `qihuang.decoding.DecodeParams`)."""
    no_repeat_ngram_size: int = DecodeParams.no_repeat_ngram_size
    """A generated n-gram is never generated again in this answer (0 = off)."""
    quotes: Quotable | None = None
    """What a quotation the answer opens (“ 「 『) must copy word for word (`qihuang.quotes`; None = no
    constraint). Set by `rag.answer_chunks` from the passages shown; the vLLM engine does not apply it."""

    def __post_init__(self) -> None:
        _ = self.decode  # refuses out-of-range repetition control now, not at the first token

    @property
    def decode(self) -> DecodeParams:
        """The repetition control of these settings."""
        return DecodeParams(self.repetition_penalty, self.no_repeat_ngram_size)

    @property
    def greedy(self) -> bool:
        """Decode greedily (argmax, no sampling): temperature below MIN_TEMPERATURE (#16: dividing logits by 1e-40
        overflows to inf/NaN probabilities)."""
        return self.temperature < MIN_TEMPERATURE


@dataclass
class Chunk:
    """A piece of streamed output; the last chunk carries `finish_reason`."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str | None = None


class ServingEngine(Protocol):
    """What the serving layer (`rag.prepare_prompt`, `rag.answer_chunks`, `serve.app`, `serve.chat`) needs of an
    engine: the hf `Engine` and `vllm_engine.VLLMEngine` both provide it."""

    name: str
    """The served model name."""
    prompts: PromptCodec
    """Renders and encodes conversations with the model's chat template."""
    max_context: int
    """Prompt + generated tokens the model takes at most."""
    adapters: dict[str, Any]
    """LoRA adapters a request may choose by `model` (name → adapter); empty when the engine has none."""

    def generate(self, messages: Sequence[dict[str, Any]] | None = None, params: SamplingParams | None = None,
                 prompt: str | None = None, cancelled: Callable[[], bool] | None = None,
                 **kwargs: Any) -> Iterator[Chunk]:
        """Stream the answer's chunks; the last one has a finish_reason."""
        ...


class Engine:
    """A loaded causal LM plus its tokenizer; thread-safe. With `max_batch` > 1 concurrent requests are decoded
    together (continuous batching, `qihuang.serve.batching`); otherwise one forward pass at a time, requests
    interleaving token by token."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "qihuang", path: Path | None = None,
                 lookup_draft: int = 8, lookup_ngram: int = 3, static: bool | None = None,
                 max_batch: int = 1) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.lookup_draft = lookup_draft
        self.lookup_ngram = lookup_ngram
        self.backend = "hf"
        self.adapters: dict[str, Any] = {}
        """No LoRA adapters to choose from: adapters are merged at load."""
        self._lock = threading.Lock()
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.device = next(model.parameters()).device
        self.static = (self.device.type == "cuda") if static is None else static
        self._static_lock = threading.Lock()
        self._decoder: Any = None
        from qihuang.serve.fastpath import cache_kwarg

        self._cache_kw = cache_kwarg(model)
        from qihuang.template import chat_defaults

        self.prompts = PromptCodec(tokenizer, chat_defaults(path) if path is not None else {})
        from qihuang.decoding import stop_token_ids

        self.eos_ids = stop_token_ids(model, tokenizer)
        from qihuang.tokenizer import suppressed_ids

        self.suppressed = list(suppressed_ids(tokenizer))
        from qihuang.serve.batching import BatchDecoder, batchable

        self.growing = batchable(model)
        """Whether one-stream decoding appends to a `serve.kvcache.growing_cache` (plain full-attention layers)."""
        self.batcher: BatchDecoder | None = None
        """Continuous batching of concurrent requests (None: one request at a time, interleaved token by token)."""
        if max_batch > 1 and not self.static and self.growing:
            self.batcher = BatchDecoder(model, self.eos_ids, self._mask, self._cache_kw, max_batch, self._lock,
                                        learn_prefix=True)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", dtype: str = "float32", name: str | None = None,
             lookup_draft: int = 8, static: bool | None = None, max_batch: int = 1) -> Engine:
        """Load a model dir / preset / run dir (base + LoRA adapter dirs are merged on load). `static`: decode
        over a static KV cache (CUDA graph on GPU; default on for CUDA devices). `max_batch`: concurrent requests
        decoded together (1 → one at a time)."""
        from qihuang.models import load_model

        path = resolve_model_dir(model_dir)
        model, tokenizer = load_model(path, dtype=dtype, device=device)  # an adapter folder is merged onto its base
        label = name or model_label(path)
        return cls(model, tokenizer, name=label, path=path, lookup_draft=lookup_draft, static=static,
                   max_batch=max_batch)

    @property
    def suppressed(self) -> list[int]:
        """Token ids never generated: the byte fragments an extended vocabulary no longer trains (they would decode
        to U+FFFD)."""
        return self._suppressed

    @suppressed.setter
    def suppressed(self, ids: Sequence[int]) -> None:
        from qihuang.decoding import suppress_mask

        self._suppressed = list(ids)
        self._masker = suppress_mask(self._suppressed)

    def _mask(self, logits: Any) -> Any:
        """Logits with the suppressed token ids at -inf (last dimension = vocabulary)."""
        return self._masker(logits)

    # ---- generation ----------------------------------------------------------------------------------------
    def _forward(self, ids: list[int], cache: Any, keep: int) -> Any:
        import torch

        inp = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self._lock, torch.inference_mode():
            out = self.model(input_ids=inp, use_cache=True, logits_to_keep=keep, **{self._cache_kw: cache})
        return self._mask(out.logits[0].float())

    def _pick(self, logits: Any, params: SamplingParams, gen: Any, rep: Repetition | None = None) -> int:
        """The next token: repetition control (`rep`, the tokens generated so far), then argmax or sampling."""
        import torch

        if rep is not None:
            logits = rep.apply(logits)
        if params.greedy:
            return int(torch.argmax(logits))
        scores = logits.float() / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            drop = cum - sorted_p > params.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def _token_stream(self, prompt_ids: list[int], params: SamplingParams,
                      cancelled: Callable[[], bool]) -> Iterator[int]:
        """Yield generated token ids (EOS excluded); the caller stops by closing or via `cancelled`."""
        import torch
        from transformers import DynamicCache

        from qihuang.serve.kvcache import growing_cache

        gen = None
        if not params.greedy:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % (2**63)))
        rep = Repetition(params.decode, quotes=quote_copy(self.tokenizer, params.quotes))
        if self.batcher is not None:
            yield from self._batched_stream(prompt_ids, params, cancelled, gen, rep)
            return
        if self.static:
            yield from self._static_stream(prompt_ids, params, cancelled, gen, rep)
            return
        cache = growing_cache(self.model.config) if self.growing else DynamicCache()
        logits = self._forward(prompt_ids, cache, keep=1)
        nxt = self._pick(logits[-1], params, gen, rep)
        seq = list(prompt_ids)  # prompt + generated: what drafts are looked up in
        produced = 0
        drafter = self._drafter(params)
        while True:
            if nxt in self.eos_ids or cancelled():
                return
            yield nxt
            produced += 1
            seq.append(nxt)
            rep.push(nxt)
            if produced >= params.max_new_tokens:
                return
            room = params.max_new_tokens - produced
            draft = drafter.propose(seq, room) if drafter else []
            if not draft:
                logits = self._forward([nxt], cache, keep=1)
                nxt = self._pick(logits[-1], params, gen, rep)
                continue
            logits = self._forward([nxt, *draft], cache, keep=0)
            best = verify_draft(logits, draft, rep)
            accepted = accepted_prefix(draft, best)
            drafter.record(len(draft), accepted)
            cache.crop(accepted - len(draft))  # drop the rejected drafts
            for tok in draft[:accepted]:
                if tok in self.eos_ids or cancelled():
                    return
                yield tok
                produced += 1
                seq.append(tok)
                rep.push(tok)
            if produced >= params.max_new_tokens:
                return
            nxt = best[accepted]

    def _batched_stream(self, prompt_ids: list[int], params: SamplingParams, cancelled: Callable[[], bool],
                        gen: Any, rep: Repetition) -> Iterator[int]:
        """Decode as one row of the continuous batch (`qihuang.serve.batching`); alone in the batch, a greedy
        request drafts by prompt lookup as the one-stream path does."""
        from qihuang.serve.batching import Request

        assert self.batcher is not None
        yield from self.batcher.submit(Request(prompt_ids, lambda logits, r: self._pick(logits, params, gen, r),
                                               params.max_new_tokens, cancelled, rep, drafter=self._drafter(params)))

    def _drafter(self, params: SamplingParams) -> Drafter | None:
        """Prompt-lookup drafting for a greedy request (None: sampled, or drafting off)."""
        return Drafter(self.lookup_draft, self.lookup_ngram) if params.greedy and self.lookup_draft > 0 else None

    def _static_stream(self, prompt_ids: list[int], params: SamplingParams, cancelled: Callable[[], bool],
                       gen: Any, rep: Repetition) -> Iterator[int]:
        """Decode over one preallocated static KV cache (CUDA-graph step on GPU); one request at a time."""
        from qihuang.serve.fastpath import StaticDecoder

        with self._static_lock:
            if self._decoder is None:
                self._decoder = StaticDecoder(self.model, self.max_context)
            dec = self._decoder
            nxt = self._pick(self._mask(dec.prefill(prompt_ids)), params, gen, rep)
            for produced in range(1, params.max_new_tokens + 1):
                if nxt in self.eos_ids or cancelled():
                    return
                yield nxt
                rep.push(nxt)
                if produced >= params.max_new_tokens:
                    return
                nxt = self._pick(self._mask(dec.step(nxt)), params, gen, rep)

    def generate(self, messages: Sequence[dict[str, Any]] | None = None, params: SamplingParams | None = None,
                 prompt: str | None = None, cancelled: Callable[[], bool] | None = None) -> Iterator[Chunk]:
        """Stream `Chunk`s for a conversation (or a raw rendered `prompt`); the last one has `finish_reason`
        ("stop", "length" or "cancelled")."""
        params = params or SamplingParams()
        cancelled = cancelled or (lambda: False)
        text = prompt if prompt is not None else self.prompts.render(messages or [])
        prompt_ids = self.prompts.encode(text)
        if not prompt_ids:
            raise EngineError("empty prompt")
        if len(prompt_ids) + params.max_new_tokens > self.max_context:
            raise PromptTooLong(f"prompt has {len(prompt_ids)} tokens; with max_tokens={params.max_new_tokens} it "
                                f"exceeds the model's context of {self.max_context} tokens")
        detok = Detokenizer(self.tokenizer)
        stops = StopMatcher(params.stop)
        n = 0
        finish = "stop"
        tokens = self._token_stream(prompt_ids, params, cancelled)
        try:
            for tok in tokens:
                n += 1
                piece, hit = stops.feed(detok.push(tok))
                if piece:
                    yield Chunk(piece, n, len(prompt_ids))
                if hit:
                    yield Chunk("", n, len(prompt_ids), "stop")
                    return
            if cancelled():
                finish = "cancelled"
            elif n >= params.max_new_tokens:
                finish = "length"
        finally:
            tokens.close()
        piece, hit = stops.feed(detok.flush())
        tail = piece if hit else piece + stops.flush()
        yield Chunk(tail, n, len(prompt_ids), "stop" if hit else finish)

    def stream(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 256, temperature: float = 0.0,
               **kwargs: Any) -> Iterator[str]:
        """Yield text pieces of the answer as they are generated."""
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)
        for chunk in self.generate(messages, params):
            if chunk.text:
                yield chunk.text

    def complete(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = 256, temperature: float = 0.0,
                 **kwargs: Any) -> str:
        """The whole answer as one string."""
        return "".join(self.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature, **kwargs))
