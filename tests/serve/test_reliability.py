"""Regression tests of issue #16 (serving): tiny temperatures, lone surrogates, chunked bodies past the cap,
streams open at shutdown, and a hand-written fuzz corpus of such requests that must never give a 5xx."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.serve.conftest import LiveServer, slow_engine, start_server

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "桂枝汤主治什么？"}]


def _data_lines(r: httpx.Response) -> list[str]:
    return [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]


# defect 2: temperature 1e-40 / 1e-300 gave inf/NaN probabilities → 500 (and an error event after a 200)
@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324, 1e-5])
def test_tiny_temperature_decodes_greedily(live: LiveServer, temperature: float) -> None:
    body = {"messages": USER, "max_tokens": 6, "temperature": temperature, "seed": 1}
    r = httpx.post(live.url + CHAT, json=body, timeout=60)
    assert r.status_code == 200, r.text
    greedy = httpx.post(live.url + CHAT, json={**body, "temperature": 0}, timeout=60).json()
    assert r.json()["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
    with httpx.stream("POST", live.url + CHAT, json={**body, "stream": True}, timeout=60) as s:
        lines = _data_lines(s)
    assert lines[-1] == "[DONE]" and not any('"error"' in x for x in lines[:-1])
    assert json.loads(lines[-2])["choices"][0]["finish_reason"] in ("stop", "length")


def test_engine_pick_is_finite_at_tiny_temperature(engine: Any) -> None:
    """defect 2, at the engine: the same tokens as greedy decoding."""
    msgs = [{"role": "user", "content": "人参"}]
    assert engine.complete(msgs, max_new_tokens=5, temperature=1e-40) == engine.complete(msgs, max_new_tokens=5)


# defect 3: a lone surrogate reached the tokenizer → 500 TypeError
@pytest.mark.parametrize("raw, field", [
    ('{"messages": [{"role": "user", "content": "\\ud800abc"}]}', "messages.0.content"),
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udfffb"}]}]}', "messages.0.content"),
    ('{"messages": [{"role": "user", "content": "x"}], "stop": ["\\ud83d"]}', "stop"),
    ('{"messages": [{"role": "user", "content": "x", "name": "\\udc00"}]}', "messages.0.name"),
])
def test_lone_surrogate_is_a_400_naming_the_field(live: LiveServer, raw: str, field: str) -> None:
    r = httpx.post(live.url + CHAT, content=raw.encode(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"].startswith(field), err
    assert "surrogate" in err["message"] or "unicode" in err["message"]


def _open(url: str) -> socket.socket:
    u = urlparse(url)
    return socket.create_connection((u.hostname, u.port), timeout=30)


# defect 4: a chunked 30 MB body was read whole (the cap looked at Content-Length only)
def test_chunked_body_over_the_cap_is_413_before_it_is_read(live: LiveServer) -> None:
    sock = _open(live.url)
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    piece = b"a" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent, reply = 0, b""
    try:
        while sent < 30_000_000:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(chunk)
            sent += len(piece)
    except OSError:  # the server closed the connection after answering
        pass
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        reply += data
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 8_000_000, f"{sent} bytes were taken before the refusal"
    r = httpx.post(live.url + CHAT, json={"messages": USER, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200  # the server is fine afterwards


def test_small_chunked_body_is_accepted(live: LiveServer) -> None:
    def body() -> Any:
        yield json.dumps({"messages": USER, "max_tokens": 2}).encode()

    r = httpx.post(live.url + CHAT, content=body(), headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text


# defect 5: SIGTERM during a stream cut it after the grace period: no finish_reason, no [DONE]
def test_shutdown_ends_open_stream_with_final_chunk(tiny_model_dir: Any, index: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from sse_starlette.sse import AppStatus

    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    eng, _ = slow_engine(tiny_model_dir, 0.15)
    srv = start_server(create_app(eng, index, ServeConfig(max_tokens=400, shutdown_grace_s=1.5, answer_guard=False)))
    lines: list[str] = []
    body = {"messages": [{"role": "user", "content": "人参"}], "max_tokens": 400, "stream": True}
    with httpx.stream("POST", srv.url + CHAT, json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                lines.append(line[5:].strip())
                if len(lines) == 3:
                    # what uvicorn's SIGTERM handler does (in a thread sse-starlette cannot see the handler)
                    srv.server.should_exit = True
                    monkeypatch.setattr(AppStatus, "should_exit", True)
    srv.thread.join(timeout=20)
    assert not srv.thread.is_alive()
    assert lines[-1] == "[DONE]", lines[-3:]
    final = json.loads(lines[-2])
    assert final["choices"][0]["finish_reason"] == "length" and len(lines) < 400


# The fuzz corpus: hand-written hostile requests of the kinds above; none may answer 5xx.
def _chat(extra: bytes = b"", content: bytes = b'"x"') -> bytes:
    """A chat body with one user message (`content`, raw JSON) and `extra` raw JSON members."""
    return b'{"messages": [{"role": "user", "content": ' + content + b"}]" + (b", " + extra if extra else b"") + b"}"


LARGE = _chat(content=b'"' + b"a" * 1_000_100 + b'"')
GET, POST = "GET", "POST"
FUZZ = [
    pytest.param(POST, CHAT, _chat(content=b'"\\ud800abc"'), {}, id="surrogate-content"),
    pytest.param(POST, CHAT, _chat(b'"stream": true', b'"\\udfff"'), {}, id="surrogate-stream"),
    pytest.param(POST, CHAT, _chat(b'"model": "\\ud800"'), {}, id="surrogate-model"),
    pytest.param(POST, CHAT, _chat(b'"user": "\\ud800"'), {}, id="surrogate-user"),
    pytest.param(POST, CHAT, _chat(b'"max_tokens": 2', b'"\\ud83d\\ude00 ok"'), {}, id="surrogate-pair-ok"),
    pytest.param(POST, CHAT, _chat(b'"temperature": 1e-40, "max_tokens": 2'), {}, id="temperature-1e-40"),
    pytest.param(POST, CHAT, _chat(b'"temperature": 1e-300, "stream": true, "max_tokens": 2'), {},
                 id="temperature-1e-300-stream"),
    pytest.param(POST, CHAT, _chat(b'"temperature": 5e-324, "top_k": 1, "max_tokens": 2'), {},
                 id="temperature-denormal-top-k"),
    pytest.param(POST, CHAT, _chat(b'"temperature": 1e400'), {}, id="temperature-inf"),
    pytest.param(POST, CHAT, _chat(b'"temperature": NaN'), {}, id="temperature-nan"),
    pytest.param(POST, CHAT, _chat(b'"top_p": 1e-300, "temperature": 1, "max_tokens": 2'), {}, id="top-p-tiny"),
    pytest.param(POST, CHAT, _chat(b'"max_tokens": 1e30'), {}, id="max-tokens-huge"),
    pytest.param(POST, CHAT, _chat(b'"seed": -1'), {}, id="seed-negative"),
    pytest.param(POST, CHAT, _chat(content=b'"\xff\xfe"'), {}, id="invalid-utf8"),
    pytest.param(POST, CHAT, _chat()[:-1], {}, id="truncated-json"),
    pytest.param(POST, CHAT, b"[]", {}, id="json-list"),
    pytest.param(POST, CHAT, b"null", {}, id="json-null"),
    pytest.param(POST, CHAT, b"", {}, id="empty-body"),
    pytest.param(POST, CHAT, _chat(b'"max_tokens": 2', b'"\\u0000"'), {}, id="nul-character"),
    pytest.param(POST, CHAT, LARGE, {}, id="body-over-cap"),
    pytest.param(POST, CHAT, _chat(), {"Content-Type": "text/plain"}, id="text-plain"),
    pytest.param(GET, "/v1/models", b"", {}, id="models"),
    pytest.param(GET, "/", b"", {}, id="web-page"),
    pytest.param(GET, "/static/%2e%2e%2fapp.py", b"", {}, id="static-traversal"),
]


FUZZ_SENT = [pytest.param(*p.values, False, id=p.id) for p in FUZZ] + [
    pytest.param(*p.values, True, id=f"{p.id}-chunked") for p in FUZZ if p.values[0] == POST]


@pytest.mark.parametrize("method, path, raw, headers, chunked", FUZZ_SENT)
def test_fuzz_corpus_never_5xx(live: LiveServer, method: str, path: str, raw: bytes, headers: dict[str, str],
                               chunked: bool) -> None:
    """Each request as is and (POSTs) with Transfer-Encoding: chunked (the body-size cap counts those bytes too)."""
    content: Any = None
    if method == POST:
        content = iter([raw[: len(raw) // 2], raw[len(raw) // 2:]]) if chunked else raw
    r = httpx.request(method, live.url + path, content=content, timeout=60,
                      headers={"Content-Type": "application/json", **headers})
    assert r.status_code < 500, (raw[:80], r.status_code, r.text[:300])
    if raw is LARGE:
        assert r.status_code == 413
    if r.status_code >= 400:
        assert "error" in r.json()
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [x[5:].strip() for x in r.text.splitlines() if x.startswith("data:")]
        assert lines[-1] == "[DONE]" and not any('"error"' in x for x in lines[:-1])
