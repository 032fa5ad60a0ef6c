"""`create_app(engine, index, config)`: the FastAPI app of `qihuang serve` — OpenAI-compatible chat completions
(SSE stream and JSON), citations, Bearer keys, validation with OpenAI-style errors, a bounded queue (503 when
full), cancellation on client disconnect, graceful shutdown, and the web chat page at `/`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qihuang.serve.engine import EngineError, SamplingParams
from qihuang.serve.guard import GuardMiddleware, _error
from qihuang.serve.protocol import (
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice, Citation,
    Delta, ErrorResponse, Health, ModelCard, ModelList, Usage, error_body, new_id,
)
from qihuang.answer_guard import HOLD_CHARS
from qihuang.rag import Prepared, answer_chunks, citations_for, prepare_prompt
from qihuang.retrieval import PassageIndex
from qihuang.serve.settings import ServeConfig

WEB_DIR = Path(__file__).parent / "web"
WEB_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in ((400, "Invalid request"), (401, "Missing or invalid API key"), (413, "Body too large"),
                       (503, "Server busy (queue full) or shutting down"))
}


class Admission:
    """At most `concurrency` generations at once and `queue` waiting (FIFO); otherwise refuse (→ 503)."""

    def __init__(self, concurrency: int, queue: int, timeout_s: float) -> None:
        self.concurrency, self.queue, self.timeout_s = concurrency, queue, timeout_s
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> bool:
        """True when a slot was obtained (call `release` later), False when the queue is full or timed out."""
        if self.active < self.concurrency and not self.waiting:
            self.active += 1
            return True
        if self.waiting >= self.queue:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return True  # handed a slot at the last moment
            fut.cancel()
            return False
        except asyncio.CancelledError:  # the client went away while queued
            if fut.done() and not fut.cancelled():
                self.release()
            else:
                fut.cancel()
            raise
        return True

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter, else count it free."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1


class Job:
    """One generation running in a worker thread; chunks arrive on an asyncio queue."""

    def __init__(self, engine: Any, prep: Prepared, params: SamplingParams, on_done: Callable[[], None],
                 lora: str | None = None, guard: bool = True, stream: bool = True, min_support: float = 0.0) -> None:
        self.cancel = threading.Event()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                loop.call_soon_threadsafe(self.queue.put_nowait, item)

        def work() -> None:
            try:
                extra = {"lora": lora} if lora else {}
                for chunk in answer_chunks(engine, prep, params, guard, HOLD_CHARS if stream else None, min_support,
                                          cancelled=self.cancel.is_set, **extra):
                    put(chunk)
            except Exception as exc:  # reported to the client as a 500-class error event, never a hang
                put(exc)
            finally:
                put(None)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(on_done)

        self.thread = threading.Thread(target=work, name="qihuang-gen", daemon=True)
        self.thread.start()

    async def chunks(self) -> AsyncIterator[Any]:
        """Chunks until the generation ends (an exception from the engine is re-raised)."""
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item


def create_app(engine: Any, index: PassageIndex | None = None, config: ServeConfig | None = None) -> FastAPI:
    """The API + web app around a loaded engine (and optional passage index)."""
    cfg = config or ServeConfig()
    keys = list(cfg.api_keys) + [k for k in os.environ.get("QIHUANG_API_KEYS", "").split(",") if k.strip()]
    admission = Admission(cfg.max_concurrency, cfg.max_queue, cfg.queue_timeout_s)
    jobs: set[Job] = set()
    state = {"shutting_down": False}
    created = int(time.time())
    adapters = sorted(getattr(engine, "adapters", {}) or {})  # vLLM LoRA adapters, chosen by `model`
    served = [engine.name, *adapters]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state["shutting_down"] = True
        deadline = time.monotonic() + cfg.shutdown_grace_s
        while jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(jobs):
            job.cancel.set()

    app = FastAPI(title="qihuang", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible chat completions over a model of the Chinese medical classics, "
                              "with citations of the passages the answer rests on.")
    app.state.engine, app.state.index, app.state.config, app.state.admission = engine, index, cfg, admission
    app.add_middleware(GuardMiddleware, keys=keys)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        # a union (content: str | list of parts) reports every branch: the value check that failed says most
        first = next((e for e in errs if not str(e.get("type", "")).endswith("_type")), errs[0] if errs else {})
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = f"{'.'.join(loc) + ': ' if loc else ''}{first.get('msg', 'invalid request')}"
        return _error(400, msg, param=".".join(loc) or None, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404
                      else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.get("/health", response_model=Health, tags=["meta"])
    async def health() -> Health:
        """Liveness (answers without an API key)."""
        return Health(status="shutting_down" if state["shutting_down"] else "ok", model=engine.name,
                      active=admission.active, queued=admission.waiting,
                      passages=len(index.passages) if index else 0)

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS, tags=["openai"])
    async def models() -> ModelList:
        """The served model."""
        return ModelList(data=[ModelCard(id=name, created=created) for name in served])

    def check_limits(req: ChatCompletionRequest) -> JSONResponse | None:
        if len(req.messages) > cfg.max_messages:
            return _error(400, f"at most {cfg.max_messages} messages per request", param="messages")
        if sum(len(m.text()) for m in req.messages) > cfg.max_chars:
            return _error(400, f"messages hold more than {cfg.max_chars} characters", param="messages")
        if not any(m.role == "user" and m.text().strip() for m in req.messages):
            return _error(400, "messages need at least one non-empty user message", param="messages")
        if req.wanted_tokens(cfg.default_max_tokens) > cfg.max_tokens:
            return _error(400, f"max_tokens must be at most {cfg.max_tokens}", param="max_tokens")
        if req.model not in (None, "", *served):
            return _error(404, f"model {req.model!r} is not served here (GET /v1/models)", "not_found_error",
                          param="model", code="model_not_found")
        return None

    @app.post("/v1/chat/completions", response_model=ChatCompletion, tags=["openai"],
              responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                                         "description": "JSON, or SSE chunks when stream=true"}})
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        """Chat completion (stream=true → SSE of chat.completion.chunk, ending with `data: [DONE]`)."""
        bad = check_limits(req)
        if bad is not None:
            return bad
        if state["shutting_down"]:
            return _error(503, "server is shutting down", "server_error", code="shutting_down")
        if not await admission.acquire():
            return _error(503, "server busy: too many requests in the queue, retry later", "server_error",
                          code="overloaded")
        max_new = req.wanted_tokens(cfg.default_max_tokens)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        k = cfg.passages_k if req.passages_k is None else req.passages_k
        try:
            prep = await asyncio.to_thread(prepare_prompt, engine, messages, index if req.retrieval else None, k,
                                           cfg.passage_chars, max_new, cfg.relevance_gate, cfg.cite_first)
        except EngineError as exc:
            admission.release()
            return _error(400, str(exc), param="messages", code="context_length_exceeded")
        except Exception:
            admission.release()
            raise
        if prep.prompt_tokens * max_new > cfg.max_request_work:
            admission.release()
            return _error(400, f"prompt of {prep.prompt_tokens} tokens × max_tokens {max_new} exceeds this server's "
                               f"limit of {cfg.max_request_work} (shorten the conversation or lower max_tokens)",
                          param="max_tokens", code="request_too_large")
        params = SamplingParams(max_new_tokens=max_new, temperature=req.temperature, top_p=req.top_p,
                                top_k=req.top_k, stop=req.stop_list(), seed=req.seed, **req.decode_overrides())
        job = Job(engine, prep, params, admission.release, lora=req.model if req.model in adapters else None,
                  guard=cfg.answer_guard, stream=bool(req.stream), min_support=cfg.answer_support)
        jobs.add(job)
        if req.stream:
            return _stream(job, prep, req, jobs)
        return await _complete(job, prep, request, jobs)

    async def _complete(job: Job, prep: Prepared, request: Request, jobs_: set[Job]) -> Any:
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
            jobs_.discard(job)
        text = "".join(parts)
        n = last.completion_tokens if last else 0
        finish = "length" if last is not None and last.finish_reason == "length" else "stop"
        cites = [Citation(**c) for c in citations_for(prep.hits, prep.query, text)]
        return ChatCompletion(model=engine.name, choices=[Choice(message=AssistantMessage(content=text),
                                                                 finish_reason=finish)],
                              usage=Usage(prompt_tokens=prep.prompt_tokens, completion_tokens=n,
                                          total_tokens=prep.prompt_tokens + n), citations=cites)

    def _stream(job: Job, prep: Prepared, req: ChatCompletionRequest, jobs_: set[Job]) -> Any:
        from sse_starlette.sse import EventSourceResponse

        cid, ts = new_id(), int(time.time())

        def event(delta: Delta, finish: str | None = None, **extra: Any) -> dict[str, str]:
            chunk = ChatCompletionChunk(id=cid, created=ts, model=engine.name,
                                        choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
            return {"data": chunk.model_dump_json(exclude_none=True)}

        shutdown = anyio.Event()
        # on SIGTERM the answer may go on for most of the grace period; then it is stopped, so that the stream
        # still ends with a final chunk (finish_reason) and [DONE] before the connection is closed (#16)
        drain_s = max(cfg.shutdown_grace_s - max(1.0, cfg.shutdown_grace_s / 4), 0.0)

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
                                               "model": engine.name, "choices": [],
                                               "usage": usage.model_dump()})}
            except Exception as exc:
                yield {"data": json.dumps(error_body(f"generation failed: {type(exc).__name__}", "server_error"))}
            finally:
                stopper.cancel()
                job.cancel.set()  # client gone or stream finished: stop the worker thread
                jobs_.discard(job)
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), ping=15, send_timeout=30, shutdown_event=shutdown,
                                   shutdown_grace_period=cfg.shutdown_grace_s,
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/", include_in_schema=False)
    async def index_page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Any:
        if name not in WEB_FILES:
            return _error(404, f"no static file {name!r}", "not_found_error")
        return FileResponse(WEB_DIR / name, media_type=f"{WEB_FILES[name]}; charset=utf-8")

    return app
