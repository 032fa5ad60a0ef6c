"""Pydantic models of the OpenAI chat-completions API (request, response, stream chunks, errors, model list), plus
the `citations` extension field."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from qihuang.config import ConfigError
from qihuang.decoding import DecodeParams

HARD_MAX_MESSAGES = 256
HARD_MAX_CHARS = 100_000
HARD_MAX_TOKENS = 8192


Text = Annotated[str, Field(max_length=HARD_MAX_CHARS)]
"""Message text. Every string field is constrained, so pydantic itself refuses lone surrogates (which no tokenizer
can encode) as `string_unicode`, naming the field."""
StopString = Annotated[str, Field(max_length=64)]


class TextPart(BaseModel):
    """A text content part (OpenAI's list form of `content`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    """One conversation turn."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[TextPart] = Field(description="Text, or a list of text parts")
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    """`stream_options` of the OpenAI API."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions body (OpenAI-compatible; `retrieval`/`passages_k` are qihuang extensions)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, max_length=256, description="Served model id (optional)")
    messages: list[ChatMessage] = Field(min_length=1, max_length=HARD_MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=HARD_MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=HARD_MAX_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1000)
    n: int = Field(default=1, ge=1, le=1, description="Only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | list[StopString] | None = Field(default=None, description="Up to 4 stop strings")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="Accepted, not applied")
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, description="Accepted, not applied")
    repetition_penalty: float | None = Field(default=None, description=(
        "Penalty on tokens already generated in this answer (1 = off; default: the server's, "
        "qihuang.decoding.DecodeParams)"))
    no_repeat_ngram_size: int | None = Field(default=None, le=64, description=(
        "A generated n-gram of this many tokens is never generated again (0 = off; 1 is refused; default: the "
        "server's)"))
    user: str | None = Field(default=None, max_length=256)
    retrieval: bool = Field(default=True, description="Retrieve passages from the classics and cite them")
    passages_k: int | None = Field(default=None, ge=0, le=10, description="How many passages to retrieve")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("repetition_penalty", "no_repeat_ngram_size")
    @classmethod
    def _check_decode(cls, v: float | int | None, info: ValidationInfo) -> float | int | None:
        """The bounds of `qihuang.decoding.DecodeParams` (the one place they are written)."""
        if v is not None:
            try:
                DecodeParams(**{info.field_name: v})
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    def decode_overrides(self) -> dict[str, float | int]:
        """The repetition-control fields the request set (the engine's defaults apply to the others)."""
        return {k: v for k, v in (("repetition_penalty", self.repetition_penalty),
                                  ("no_repeat_ngram_size", self.no_repeat_ngram_size)) if v is not None}

    def stop_list(self) -> list[str]:
        """`stop` as a list of non-empty strings."""
        items = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in items if s]

    def wanted_tokens(self, default: int) -> int:
        """max_completion_tokens, else max_tokens, else the server default."""
        return self.max_completion_tokens or self.max_tokens or default


class Citation(BaseModel):
    """A passage the answer rests on: 《书名·篇名》, passage id and the quoted span."""

    index: int = Field(description="The [n] marker used in the prompt")
    id: str
    book: str
    section: str
    title: str
    dynasty: str = ""
    author: str = ""
    quote: str
    quote_start: int = Field(description="Character offset of the quote in the cleaned book")
    quote_end: int
    score: float
    cited: bool = Field(description="The answer marks this passage or reuses its wording")


class Usage(BaseModel):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """One (the only) completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


def new_id() -> str:
    """An OpenAI-style completion id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


class ChatCompletion(BaseModel):
    """Non-streaming response."""

    id: str = Field(default_factory=new_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    citations: list[Citation] = Field(default_factory=list)


class Delta(BaseModel):
    """Incremental message content of a stream chunk."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """A choice inside a stream chunk."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streaming response (`data: {...}`); the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    citations: list[Citation] | None = None


class ModelCard(BaseModel):
    """An entry of GET /v1/models."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qihuang"


class ModelList(BaseModel):
    """GET /v1/models response."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """OpenAI-style error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """`{"error": {...}}`."""

    error: ErrorDetail


class Health(BaseModel):
    """GET /health response."""

    status: Literal["ok", "shutting_down"]
    model: str
    active: int
    queued: int
    passages: int


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The JSON of an OpenAI-style error."""
    return ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()
