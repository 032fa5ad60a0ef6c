"""`create_app(engine, index, config)`: the FastAPI app of `qihuang serve` — OpenAI-compatible chat completions
(SSE stream and JSON), citations, Bearer keys, validation with OpenAI-style errors, a bounded queue (503 when
full), cancellation on client disconnect, graceful shutdown, and the web chat page at `/`. Handlers are module-level
functions over the app's `ServeState`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qihuang.rag import Prepared, citations_for, prepare_prompt
from qihuang.retrieval import PassageIndex
from qihuang.serve.engine import EngineError, SamplingParams, ServingEngine
from qihuang.serve.guard import GuardMiddleware, _error
from qihuang.serve.jobs import Admission, Job
from qihuang.serve.protocol import (
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice, Citation,
    Delta, ErrorResponse, Health, ModelCard, ModelList, Usage, error_body, new_id,
)
from qihuang.serve.settings import ServeConfig

WEB_DIR = Path(__file__).parent / "web"
WEB_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in ((400, "Invalid request"), (401, "Missing or invalid API key"), (413, "Body too large"),
                       (503, "Server busy (queue full) or shutting down"))
}


@dataclass
class ServeState:
    """What the handlers share: the engine, the index, the config, admission and the running jobs."""

    engine: ServingEngine
    """The loaded model (hf or vLLM)."""
    index: PassageIndex | None
    """The passages retrieval draws on (None: no retrieval)."""
    cfg: ServeConfig
    """Limits, retrieval and guard settings."""
    admission: Admission
    """Concurrency slots and the FIFO queue."""
    jobs: set[Job] = field(default_factory=set)
    """Generations running now (cancelled at shutdown)."""
    shutting_down: bool = False
    """Set once the server is stopping: new requests get 503."""
    created: int = field(default_factory=lambda: int(time.time()))
    """Creation time reported by /v1/models."""

    @property
    def served(self) -> list[str]:
        """Model names a request may ask for: the engine's, then its LoRA adapters (vLLM)."""
        return [self.engine.name, *sorted(self.engine.adapters)]


def _state(request: Request) -> ServeState:
    return request.app.state.serve  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    st: ServeState = app.state.serve
    st.shutting_down = True
    deadline = time.monotonic() + st.cfg.shutdown_grace_s
    while st.jobs and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for job in list(st.jobs):
        job.cancel.set()


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = exc.errors()
    # a union (content: str | list of parts) reports every branch: the value check that failed says most
    first = next((e for e in errs if not str(e.get("type", "")).endswith("_type")), errs[0] if errs else {})
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    msg = f"{'.'.join(loc) + ': ' if loc else ''}{first.get('msg', 'invalid request')}"
    return _error(400, msg, param=".".join(loc) or None, code="invalid_value")


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404
                  else "invalid_request_error")


async def _crash(_: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal error: {type(exc).__name__}", "server_error")


router = APIRouter()


@router.get("/health", response_model=Health, tags=["meta"])
async def health(request: Request) -> Health:
    """Liveness (answers without an API key)."""
    st = _state(request)
    return Health(status="shutting_down" if st.shutting_down else "ok", model=st.engine.name,
                  active=st.admission.active, queued=st.admission.waiting,
                  passages=len(st.index.passages) if st.index else 0)


@router.get("/v1/models", response_model=ModelList, responses=ERRORS, tags=["openai"])
async def models(request: Request) -> ModelList:
    """The served model."""
    st = _state(request)
    return ModelList(data=[ModelCard(id=name, created=st.created) for name in st.served])


def check_limits(st: ServeState, req: ChatCompletionRequest) -> JSONResponse | None:
    """The error response for a request over the server's limits, else None."""
    cfg = st.cfg
    if len(req.messages) > cfg.max_messages:
        return _error(400, f"at most {cfg.max_messages} messages per request", param="messages")
    if sum(len(m.text()) for m in req.messages) > cfg.max_chars:
        return _error(400, f"messages hold more than {cfg.max_chars} characters", param="messages")
    if not any(m.role == "user" and m.text().strip() for m in req.messages):
        return _error(400, "messages need at least one non-empty user message", param="messages")
    if req.wanted_tokens(cfg.default_max_tokens) > cfg.max_tokens:
        return _error(400, f"max_tokens must be at most {cfg.max_tokens}", param="max_tokens")
    if req.model not in (None, "", *st.served):
        return _error(404, f"model {req.model!r} is not served here (GET /v1/models)", "not_found_error",
                      param="model", code="model_not_found")
    return None


async def _prepare(st: ServeState, req: ChatCompletionRequest, max_new: int) -> Prepared | JSONResponse:
    """The request's grounded, rendered prompt, or the error response (the admission slot is then released)."""
    cfg = st.cfg
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    k = cfg.passages_k if req.passages_k is None else req.passages_k
    try:
        prep = await asyncio.to_thread(prepare_prompt, st.engine, messages, st.index if req.retrieval else None, k,
                                       cfg.passage_chars, max_new, cfg.relevance_gate, cfg.cite_first)
    except EngineError as exc:
        st.admission.release()
        return _error(400, str(exc), param="messages", code="context_length_exceeded")
    except Exception:
        st.admission.release()
        raise
    if prep.prompt_tokens * max_new > cfg.max_request_work:
        st.admission.release()
        return _error(400, f"prompt of {prep.prompt_tokens} tokens × max_tokens {max_new} exceeds this server's "
                           f"limit of {cfg.max_request_work} (shorten the conversation or lower max_tokens)",
                      param="max_tokens", code="request_too_large")
    return prep


@router.post("/v1/chat/completions", response_model=ChatCompletion, tags=["openai"],
             responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                                        "description": "JSON, or SSE chunks when stream=true"}})
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
    """Chat completion (stream=true → SSE of chat.completion.chunk, ending with `data: [DONE]`)."""
    st = _state(request)
    bad = check_limits(st, req)
    if bad is not None:
        return bad
    if st.shutting_down:
        return _error(503, "server is shutting down", "server_error", code="shutting_down")
    if not await st.admission.acquire():
        return _error(503, "server busy: too many requests in the queue, retry later", "server_error",
                      code="overloaded")
    max_new = req.wanted_tokens(st.cfg.default_max_tokens)
    prep = await _prepare(st, req, max_new)
    if isinstance(prep, JSONResponse):
        return prep
    params = SamplingParams(max_new_tokens=max_new, temperature=req.temperature, top_p=req.top_p,
                            top_k=req.top_k, stop=req.stop_list(), seed=req.seed, **req.decode_overrides())
    job = Job(st.engine, prep, params, st.admission.release,
              lora=req.model if req.model in st.engine.adapters else None, guard=st.cfg.answer_guard,
              stream=bool(req.stream), min_support=st.cfg.answer_support, verbatim=st.cfg.verbatim_quotes)
    st.jobs.add(job)
    if req.stream:
        return _stream(st, job, prep, req)
    return await _complete(st, job, prep, request)


async def _complete(st: ServeState, job: Job, prep: Prepared, request: Request) -> Any:
    """The whole answer as one ChatCompletion (the generation is cancelled if the client goes away)."""
    async def watch() -> None:
        while True:
            if await request.is_disconnected():
                job.cancel.set()
                return
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    parts: list[str] = []
    last = None
    try:
        async for chunk in job.chunks():
            parts.append(chunk.text)
            last = chunk
    except EngineError as exc:
        return _error(400, str(exc), code="invalid_value")
    finally:
        watcher.cancel()
        job.cancel.set()
        st.jobs.discard(job)
    text = "".join(parts)
    n = last.completion_tokens if last else 0
    finish = "length" if last is not None and last.finish_reason == "length" else "stop"
    cites = [Citation(**c) for c in citations_for(prep.hits, prep.query, text)]
    return ChatCompletion(model=st.engine.name, choices=[Choice(message=AssistantMessage(content=text),
                                                                finish_reason=finish)],
                          usage=Usage(prompt_tokens=prep.prompt_tokens, completion_tokens=n,
                                      total_tokens=prep.prompt_tokens + n), citations=cites)


def _stream(st: ServeState, job: Job, prep: Prepared, req: ChatCompletionRequest) -> Any:
    """SSE chunks of the answer: citations first and last, a final chunk and [DONE] even at shutdown."""
    from sse_starlette.sse import EventSourceResponse

    cid, ts = new_id(), int(time.time())

    def event(delta: Delta, finish: str | None = None, **extra: Any) -> dict[str, str]:
        chunk = ChatCompletionChunk(id=cid, created=ts, model=st.engine.name,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
        return {"data": chunk.model_dump_json(exclude_none=True)}

    shutdown = anyio.Event()
    # on SIGTERM the answer may go on for most of the grace period; then it is stopped, so that the stream
    # still ends with a final chunk (finish_reason) and [DONE] before the connection is closed (#16)
    drain_s = max(st.cfg.shutdown_grace_s - max(1.0, st.cfg.shutdown_grace_s / 4), 0.0)

    async def stop_at_shutdown() -> None:
        await shutdown.wait()
        await asyncio.sleep(drain_s)
        job.cancel.set()

    async def events() -> AsyncIterator[dict[str, str]]:
        parts: list[str] = []
        n = 0
        stopper = asyncio.create_task(stop_at_shutdown())
        try:
            first = [Citation(**c) for c in citations_for(prep.hits, prep.query, "")]
            yield event(Delta(role="assistant", content=""), citations=first)
            finish = "stop"
            async for chunk in job.chunks():
                n = chunk.completion_tokens
                if chunk.text:
                    parts.append(chunk.text)
                    yield event(Delta(content=chunk.text))
                if chunk.finish_reason == "length":
                    finish = "length"
            if shutdown.is_set() and job.cancel.is_set():
                finish = "length"  # cut short by the server's shutdown: the answer is incomplete
            cites = [Citation(**c) for c in citations_for(prep.hits, prep.query, "".join(parts))]
            yield event(Delta(), finish, citations=cites)
            if req.stream_options and req.stream_options.include_usage:
                usage = Usage(prompt_tokens=prep.prompt_tokens, completion_tokens=n,
                              total_tokens=prep.prompt_tokens + n)
                yield {"data": json.dumps({"id": cid, "object": "chat.completion.chunk", "created": ts,
                                           "model": st.engine.name, "choices": [],
                                           "usage": usage.model_dump()})}
        except Exception as exc:
            yield {"data": json.dumps(error_body(f"generation failed: {type(exc).__name__}", "server_error"))}
        finally:
            stopper.cancel()
            job.cancel.set()  # client gone or stream finished: stop the worker thread
            st.jobs.discard(job)
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), ping=15, send_timeout=30, shutdown_event=shutdown,
                               shutdown_grace_period=st.cfg.shutdown_grace_s,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})



@router.get("/", include_in_schema=False)
async def index_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Any:
    if name not in WEB_FILES:
        return _error(404, f"no static file {name!r}", "not_found_error")
    return FileResponse(WEB_DIR / name, media_type=f"{WEB_FILES[name]}; charset=utf-8")


def create_app(engine: ServingEngine, index: PassageIndex | None = None, config: ServeConfig | None = None) -> FastAPI:
    """The API + web app around a loaded engine (and optional passage index)."""
    cfg = config or ServeConfig()
    app = FastAPI(title="qihuang", version="0.1.0", lifespan=_lifespan,
                  description="OpenAI-compatible chat completions over a model of the Chinese medical classics, "
                              "with citations of the passages the answer rests on.")
    app.state.serve = ServeState(engine, index, cfg, Admission(cfg.max_concurrency, cfg.max_queue,
                                                               cfg.queue_timeout_s))
    app.add_middleware(GuardMiddleware, keys=cfg.resolved_api_keys())
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _crash)
    app.include_router(router)
    return app
