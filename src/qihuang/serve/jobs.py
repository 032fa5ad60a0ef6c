"""Running generations for the server: admission (a bounded concurrency + FIFO queue, refused when full) and jobs
(one generation in a worker thread whose chunks arrive on an asyncio queue, cancelled when the client goes)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from qihuang.answer_guard import HOLD_CHARS
from qihuang.rag import Prepared, answer_chunks
from qihuang.serve.engine import SamplingParams


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
                 lora: str | None = None, guard: bool = True, stream: bool = True, min_support: float = 0.0,
                 verbatim: bool = True) -> None:
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
                                          verbatim, cancelled=self.cancel.is_set, **extra):
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
