"""Async client for an OpenAI-compatible chat endpoint: bounded concurrency, retries with exponential back-off and
jitter (timeouts, connection errors, 429, 5xx, malformed bodies), requests/tokens-per-minute limits, an on-disk
response cache keyed by hash(model, messages, params) so a rerun never pays twice, and token/cost accounting.

The API key is read from an environment variable and only ever placed in the Authorization header.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qihuang.instruct.settings import TeacherSettings


class TeacherError(RuntimeError):
    """A request failed for good (after retries, or with a non-retryable status); `kind` names the fault."""

    def __init__(self, kind: str, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts


class TeacherUnreachable(TeacherError):
    """The endpoint could not be reached at all after retries; the run stops, keeping what it has."""


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """sha256 of (model, messages, params) in canonical JSON."""
    blob = json.dumps({"model": model, "messages": messages, "params": params}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Append-only JSONL of completed responses (`key`, `content`, `usage`), flushed per record (so a killed
    process loses nothing it was paid for) and fsynced at least every `fsync_every` seconds; a torn last line
    is ignored on load."""

    def __init__(self, directory: Path, fsync_every: float = 1.0) -> None:
        self.fsync_every = fsync_every
        self._synced = time.monotonic()
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "responses.jsonl"
        self._data: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn write from a crash
                    if isinstance(rec, dict) and "key" in rec:
                        self._data[rec["key"]] = rec
        self._fh = open(self.path, "a", encoding="utf-8")

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def put(self, key: str, content: str, usage: dict[str, int]) -> None:
        rec = {"key": key, "content": content, "usage": usage, "time": round(time.time(), 3)}
        self._data[key] = rec
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()  # in the OS once written: a killed process loses nothing
        if time.monotonic() - self._synced >= self.fsync_every:  # and on disk within a second (power loss)
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


class Bucket:
    """Token bucket refilled at `per_minute / 60` per second, holding at most two seconds' worth (≥ 1)."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, 2 * self.rate)
        self.level = self.capacity
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        async with self.lock:
            while True:
                self._refill()
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)

    def correct(self, delta: float) -> None:
        """Charge (or refund) `delta` after the real usage is known."""
        self._refill()
        self.level = min(self.capacity, self.level - delta)


@dataclass
class Usage:
    """Token, request and cost accounting for one run."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def cost(self, price_in: float, price_out: float) -> float:
        return round(self.prompt_tokens * price_in / 1e6 + self.completion_tokens * price_out / 1e6, 6)

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1


class TeacherClient:
    """`await client.complete(messages)` → (content, usage, cached). Raises TeacherError after retries."""

    POOL = 4
    """Connections per httpx pool."""

    def __init__(self, s: TeacherSettings, cache: ResponseCache) -> None:
        if not s.teacher_url:
            raise ValueError("TeacherClient needs teacher_url")
        self.s = s
        self.base_url: str = s.teacher_url
        self.cache = cache
        self.usage = Usage()
        self.sem = asyncio.Semaphore(s.concurrency)
        self.req_bucket = Bucket(s.rpm)
        self.tok_bucket = Bucket(s.tpm)
        self.in_flight = 0
        self.max_in_flight = 0
        self.offline = False  # set after the endpoint proved unreachable: cache hits only
        key = os.environ.get(s.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # several small connection pools instead of one big one: httpcore scans its whole pool on every
        # request event, which costs O(connections) per event and caps throughput at high concurrency
        n = max(1, s.concurrency // self.POOL)
        per = 2 * -(-s.concurrency // n)  # round-robin spreads evenly; headroom avoids queueing on a busy pool
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        https = self.base_url.startswith("https")
        verify: ssl.SSLContext | bool = ssl.create_default_context() if https else False
        self.pools = [httpx.AsyncClient(base_url=self.base_url.rstrip("/") + "/", headers=headers, limits=limits,
                                        timeout=httpx.Timeout(s.timeout), verify=verify) for _ in range(n)]
        self._next = 0

    def __repr__(self) -> str:  # never show the key
        return f"TeacherClient({self.base_url!r}, model={self.s.teacher_model!r})"

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        d = min(self.s.max_backoff, self.s.backoff * 2**attempt) * (0.5 + random.random())
        if retry_after is not None:
            d = max(d, min(retry_after, self.s.max_backoff))
        return d

    async def _once(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, int]]:
        body = {"model": self.s.teacher_model, "messages": messages, **self.s.params}
        est = sum(len(m["content"]) for m in messages) + int(self.s.params.get("max_tokens", 512)) // 2
        await self.req_bucket.take(1)
        await self.tok_bucket.take(est)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            pool = self.pools[self._next % len(self.pools)]
            self._next += 1
            r = await pool.post("chat/completions", json=body)
        finally:
            self.in_flight -= 1
        if r.status_code == 429 or r.status_code >= 500:
            ra = r.headers.get("retry-after")
            raise _Retry(f"http_{r.status_code}", f"HTTP {r.status_code}", float(ra) if ra and _num(ra) else None)
        if r.status_code >= 400:
            raise TeacherError(f"http_{r.status_code}", f"HTTP {r.status_code}: {r.text[:200]}")
        try:
            data = r.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retry("malformed_response", f"malformed response body ({type(exc).__name__})") from exc
        content = content if isinstance(content, str) else ""
        usage = parse_usage(data.get("usage"), est, len(content))
        self.tok_bucket.correct(usage["prompt_tokens"] + usage["completion_tokens"] - est)
        return content, usage

    async def complete(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, int], bool]:
        key = cache_key(self.s.teacher_model, messages, self.s.params)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.cached += 1
            return hit["content"], parse_usage(hit.get("usage"), 0, 0), True
        if self.offline:
            raise TeacherUnreachable("connect", "endpoint unreachable; serving cached responses only")
        async with self.sem:
            last: _Retry | None = None
            for attempt in range(self.s.max_retries + 1):
                if attempt:
                    self.usage.retries += 1
                    await asyncio.sleep(self._delay(attempt - 1, last.retry_after if last else None))
                try:
                    self.usage.requests += 1
                    content, usage = await self._once(messages)
                except _Retry as exc:
                    last = exc
                except httpx.TimeoutException:
                    last = _Retry("timeout", f"timed out after {self.s.timeout:g}s")
                except httpx.ConnectError as exc:
                    last = _Retry("connect", f"cannot connect to {self.base_url} ({exc.__class__.__name__})")
                except httpx.TransportError as exc:
                    last = _Retry("connection_lost", f"connection broken mid-response ({exc.__class__.__name__})")
                except TeacherError:
                    self.usage.failures += 1
                    raise
                else:
                    self.cache.put(key, content, usage)  # the paid answer is kept before anything else
                    self.usage.prompt_tokens += usage["prompt_tokens"]
                    self.usage.completion_tokens += usage["completion_tokens"]
                    return content, usage, False
                self.usage.fault(last.kind)
            assert last is not None
            self.usage.failures += 1
            cls = TeacherUnreachable if last.kind == "connect" else TeacherError
            raise cls(last.kind, f"{last} (gave up after {self.s.max_retries + 1} attempts)", self.s.max_retries + 1)


class _Retry(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def _count(value: Any, default: int) -> int:
    """A token count from an untrusted reply: a finite number (or numeric string) of at least 1, else `default`
    (a reported 0 is taken as missing: some servers send 0 when they do not count)."""
    if isinstance(value, bool):
        return default
    try:
        n = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return int(n) if 1 <= n < 1e15 else default


def parse_usage(raw: Any, prompt_default: int, completion_default: int) -> dict[str, int]:
    """The `usage` of a reply as two ints; a missing or malformed one (`"x"`, `"n/a"`, null) gives the estimates."""
    u = raw if isinstance(raw, dict) else {}
    return {"prompt_tokens": _count(u.get("prompt_tokens"), prompt_default),
            "completion_tokens": _count(u.get("completion_tokens"), completion_default)}


def _num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
