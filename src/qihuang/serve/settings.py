"""Config dataclasses of `qihuang serve`, `qihuang chat` and `qihuang search` (one docstring per field)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qihuang import answer_guard as answer_guard_mod
from qihuang import rag
from qihuang.config import ConfigError, check_ranges


@dataclass
class RetrievalConfig:
    """How passages are retrieved and put into the prompt."""

    passages: Path | None = None
    """Passages JSONL or a run dir (→ corpus/library.jsonl, else corpus/train.jsonl); None → from the run dir given as
    --model, else no retrieval."""
    passages_k: int = rag.PASSAGES_K
    """Passages retrieved per question and put into the prompt."""
    passage_chars: int = rag.PASSAGE_CHARS
    """Characters of each passage shown in the prompt (centred on the best-matching sentence)."""
    relevance_gate: bool = True
    """Decline (answer that the classics given do not cover it, cite nothing) a question that names no book or
    section of the library, uses none of its terms and quotes none of its passages (`qihuang.relevance.judge`)."""
    cite_first: bool = True
    """Open each answer with the citation 《书名·篇名》 of the retrieved passage the question matches best (the
    opening the model was trained to write), so the source an answer names is always one it was shown."""
    answer_guard: bool = True
    """Cut an answer where it turns degenerate (a loop, punctuation noise: nothing of it is streamed) and let an
    answer with nothing of its own quote its cited passage instead, marked 原文 (`qihuang.answer_guard`)."""
    answer_support: float = answer_guard_mod.MIN_SUPPORT
    """With answer_guard: cut an answer before its first sentence whose character bigrams are less than this share
    found in the question and the passages shown (invented text; `answer_guard.Support`). 0 = off — for a model
    large enough to explain in its own words."""
    verbatim_quotes: bool = True
    """A quotation an answer opens (“ 「 『) copies the cited passage shown (else the passages shown) word for word
    until it closes (`qihuang.quotes`): no misquoted classics. Not applied by the vLLM engine."""

    def __post_init__(self) -> None:
        check_ranges("retrieval", self, answer_support=(0, 1, False))
        if not 0 <= self.passages_k <= 10:
            raise ConfigError(f"passages_k must be in 0..10, got {self.passages_k}")
        if self.passage_chars < 20:
            raise ConfigError(f"passage_chars must be >= 20, got {self.passage_chars}")


@dataclass
class ServeConfig(RetrievalConfig):
    """`qihuang serve`: OpenAI-compatible API + web chat page."""

    model: str = "smollm2-135m"
    """Model dir, preset name or run dir (→ its last model stage: dpo → sft → pretrain → tokenizer)."""
    engine: Literal["hf", "vllm"] = "hf"
    """Backend: hf (transformers, CPU/GPU) or vllm (GPU, when installed)."""
    device: str = "cpu"
    """Torch device for the hf engine (cpu, cuda; on cuda decoding uses a static KV cache + CUDA graph)."""
    adapters: list[str] = field(default_factory=list)
    """LoRA adapters for --engine vllm as NAME=DIR; a request picks one with `model: NAME`."""
    host: str = "127.0.0.1"
    """Bind address."""
    port: int = 8000
    """Port (0 → a free one)."""
    api_keys: list[str] = field(default_factory=list)
    """Bearer API keys; when set, every endpoint but /health requires one (also via QIHUANG_API_KEYS, comma-separated)."""
    max_concurrency: int = 16
    """Generations running at once; the hf engine decodes them together, one forward per token for all (continuous
    batching: a request joins at the next step, leaves when it ends)."""
    max_queue: int = 32
    """Requests waiting for a slot; beyond that the server answers 503."""
    queue_timeout_s: float = 120.0
    """Seconds a request may wait in the queue before a 503."""
    max_messages: int = 32
    """Most messages per request."""
    max_chars: int = 8000
    """Most characters over all messages of a request."""
    max_tokens: int = 512
    """Largest max_tokens a request may ask for."""
    max_request_work: int = 1_048_576
    """Largest prompt tokens × max_tokens one request may ask for (what its decoding costs: every new token attends
    to the whole prompt); beyond it → 400 `request_too_large` (default: a 2048-token prompt with 512 new tokens)."""
    default_max_tokens: int = 0
    """max_tokens when the request gives none (0 → min(256, max_tokens))."""
    threads: int = 0
    """torch CPU threads (0 → leave torch's default)."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM/SIGINT: seconds to let running answers finish before they are cancelled."""

    def resolved_api_keys(self) -> list[str]:
        """The keys a request may present: `api_keys` and those of $QIHUANG_API_KEYS (comma-separated)."""
        import os

        return [*self.api_keys, *(k.strip() for k in os.environ.get("QIHUANG_API_KEYS", "").split(",") if k.strip())]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_request_work < self.max_tokens:
            raise ConfigError(f"max_request_work ({self.max_request_work}) must be at least max_tokens ({self.max_tokens})")
        if self.default_max_tokens == 0:
            self.default_max_tokens = min(256, self.max_tokens)
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise ConfigError(f"default_max_tokens ({self.default_max_tokens}) must be in 1..max_tokens "
                              f"({self.max_tokens})")
        if self.max_messages < 1 or self.max_chars < 1:
            raise ConfigError("max_messages and max_chars must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if any("=" not in a or not a.split("=", 1)[0].strip() for a in self.adapters):
            raise ConfigError(f"adapters must look like NAME=DIR, got {self.adapters}")
        if self.adapters and self.engine != "vllm":
            raise ConfigError("adapters are served by --engine vllm (merge them for the hf engine: qihuang merge)")
        if any(not k.strip() for k in self.api_keys):
            raise ConfigError("api_keys must not contain empty keys")
        check_ranges("serve", self, threads=(0, None, False), queue_timeout_s=(0, None, True),
                     shutdown_grace_s=(0, None, False))


@dataclass
class ChatConfig(RetrievalConfig):
    """`qihuang chat`: terminal chat with streaming, history, /reset, /cite on|off."""

    model: str = "smollm2-135m"
    """Model dir, preset name or run dir."""
    device: str = "cpu"
    """Torch device."""
    max_tokens: int = 256
    """Tokens per answer."""
    temperature: float = 0.0
    """Sampling temperature (0 → greedy)."""
    cite: bool = True
    """Retrieve passages and show citations (toggle in chat with /cite on|off)."""
    threads: int = 0
    """torch CPU threads (0 → leave torch's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"temperature must be in [0, 2], got {self.temperature}")
        check_ranges("chat", self, threads=(0, None, False))


@dataclass
class SearchConfig:
    """`qihuang search "…"`: ranked passages, no model needed."""

    passages: Path = Path("runs/demo")
    """Passages JSONL (corpus/train.jsonl) or a run dir."""
    k: int = 5
    """How many passages to show."""
    rebuild: bool = False
    """Rebuild the cached index."""
    json: bool = False
    """Print JSON lines instead of text."""

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 100:
            raise ConfigError(f"k must be in 1..100, got {self.k}")
