"""Optional vLLM backend (`qihuang serve --engine vllm`, GPU machines with vLLM installed): the same interface as
`Engine` (`prompts` codec / generate → Chunk stream), the same chat template, LoRA adapters by name.

One background thread owns vLLM's `LLMEngine` and steps it; requests are added and aborted through a command
queue, so concurrent API requests are batched by vLLM (continuous batching) and a cancelled request is aborted.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from qihuang.models import ModelError
from qihuang.serve.engine import (Chunk, Engine, EngineError, PromptCodec, PromptTooLong, SamplingParams, model_label,
                                   resolve_model_dir)

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log `message` the first time `key` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


class VLLMEngine:
    """vLLM-backed engine; `adapters` maps a LoRA name to its directory (pick one per request with `lora=`)."""

    backend = "vllm"

    def __init__(self, llm: Any, tokenizer: Any, name: str, max_context: int,
                 adapters: dict[str, Path] | None = None, chat_defaults: dict[str, Any] | None = None) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self.max_context = max_context
        self.adapters = dict(adapters or {})
        self.prompts = PromptCodec(tokenizer, chat_defaults or {})
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._outputs: dict[str, queue.Queue[Any]] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="qihuang-vllm", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, model: str | Path, adapters: dict[str, str] | None = None, gpu_memory_utilization: float = 0.85,
             max_model_len: int | None = None) -> VLLMEngine:
        """Start vLLM on a model dir / run dir; `adapters` = {name: LoRA dir}."""
        try:
            from vllm import EngineArgs, LLMEngine
        except ImportError as exc:
            raise ModelError("--engine vllm needs vLLM (pip install vllm, on a CUDA machine)") from exc
        from transformers import AutoTokenizer

        from qihuang.template import chat_defaults

        path = resolve_model_dir(model)
        lora = {k: Path(v) for k, v in (adapters or {}).items()}
        args = EngineArgs(model=str(path), tokenizer=str(path), enable_lora=bool(lora),
                          max_lora_rank=64 if lora else 16, gpu_memory_utilization=gpu_memory_utilization,
                          max_model_len=max_model_len)
        llm = LLMEngine.from_engine_args(args)
        tok = AutoTokenizer.from_pretrained(str(path))
        ctx = int(llm.model_config.max_model_len) if hasattr(llm, "model_config") else int(max_model_len or 2048)
        label = model_label(path)
        return cls(llm, tok, label, ctx, lora, chat_defaults(path))

    # ---- the stepping thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            busy = self.llm.has_unfinished_requests()
            try:
                cmd, arg = self._commands.get(block=not busy, timeout=None if not busy else 0)
            except queue.Empty:
                cmd, arg = "", None
            while cmd:
                if cmd == "add":
                    rid, ids, vparams, lora = arg
                    try:
                        self.llm.add_request(rid, {"prompt_token_ids": ids}, vparams, lora_request=lora)
                    except Exception as exc:  # reported to the waiting request, never kills the loop
                        self._outputs[rid].put(exc)
                elif cmd == "abort":
                    self.llm.abort_request([arg])
                    out = self._outputs.pop(arg, None)
                    if out is not None:
                        out.put(None)
                try:
                    cmd, arg = self._commands.get_nowait()
                except queue.Empty:
                    cmd = ""
            if not self.llm.has_unfinished_requests():
                continue
            for result in self.llm.step():
                out = self._outputs.get(result.request_id)
                if out is not None:
                    out.put(result)
                    if result.finished:
                        self._outputs.pop(result.request_id, None)

    def _lora_request(self, lora: str | None) -> Any:
        if not lora:
            return None
        if lora not in self.adapters:
            raise EngineError(f"unknown LoRA adapter {lora!r}; known: {sorted(self.adapters)}")
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora, sorted(self.adapters).index(lora) + 1, str(self.adapters[lora]))

    def generate(self, messages: Sequence[dict[str, Any]] | None = None, params: SamplingParams | None = None,
                 prompt: str | None = None, cancelled: Callable[[], bool] | None = None,
                 lora: str | None = None) -> Iterator[Chunk]:
        """Stream `Chunk`s like `Engine.generate` (vLLM applies stop strings and sampling)."""
        from vllm import SamplingParams as VLLMParams

        params = params or SamplingParams()
        cancelled = cancelled or (lambda: False)
        ids = self.prompts.encode(prompt if prompt is not None else self.prompts.render(messages or []))
        if len(ids) + params.max_new_tokens > self.max_context:
            raise PromptTooLong(f"prompt has {len(ids)} tokens; with max_tokens={params.max_new_tokens} it exceeds "
                                f"the model's context of {self.max_context} tokens")
        if params.no_repeat_ngram_size:
            _warn_once("ngram", f"the vLLM engine does not apply no_repeat_ngram_size={params.no_repeat_ngram_size} "
                                "(n-gram blocking, on by default in the HF engine): answers may repeat themselves")
        if params.repetition_penalty != 1.0:
            _warn_once("penalty", "the vLLM engine's repetition_penalty also penalises the prompt's tokens (the HF "
                                  "engine only the generated ones): quoting the retrieved passages is discouraged")
        vparams = VLLMParams(n=1, temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
                             top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
                             repetition_penalty=params.repetition_penalty,
                             stop=list(params.stop) or None, seed=params.seed, skip_special_tokens=True)
        rid = f"qh-{next(self._ids)}"
        out: queue.Queue[Any] = queue.Queue()
        self._outputs[rid] = out
        self._commands.put(("add", (rid, ids, vparams, self._lora_request(lora))))
        sent = ""
        finished = False
        try:
            while True:
                if cancelled():
                    yield Chunk("", 0, len(ids), "cancelled")
                    return
                try:
                    result = out.get(timeout=0.1)
                except queue.Empty:
                    continue
                if result is None:
                    yield Chunk("", 0, len(ids), "cancelled")
                    return
                if isinstance(result, Exception):
                    raise EngineError(f"vLLM rejected the request: {result}") from result
                comp = result.outputs[0]
                text = comp.text
                piece, sent = text[len(sent):], text
                if result.finished:
                    finished = True
                    reason = "length" if comp.finish_reason == "length" else "stop"
                    yield Chunk(piece, len(comp.token_ids), len(ids), reason)
                    return
                if piece and not piece.endswith("\ufffd"):
                    yield Chunk(piece, len(comp.token_ids), len(ids))
                else:
                    sent = sent[: len(sent) - len(piece)]
        finally:
            if not finished:
                self._commands.put(("abort", rid))

    # the text-level conveniences are the hf engine's own functions: both only read `self.generate`
    stream = Engine.stream
    complete = Engine.complete
