"""Terminal chat: streaming output, history, /reset, /cite on|off, citations under answers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from qihuang.serve.chat import ChatSession, run_chat
from qihuang.serve.settings import ChatConfig


def scripted(lines: list[str]) -> Any:
    it: Iterator[str] = iter(lines)

    def read(_: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def test_chat_loop(engine: Any, index: Any) -> None:
    out = io.StringIO()
    cfg = ChatConfig(max_tokens=6)
    n = run_chat(engine, index, cfg, scripted(["桂枝汤治什么？", "/cite off", "黄连", "/cite maybe", "/reset",
                                                "/cite on", "人参", "/nope", "/quit", "never read"]), out)
    text = out.getvalue()
    assert n == 3
    assert text.count("出处:") == 2  # not while /cite off
    assert "[1] 《拟方汇编·桂枝汤条》 (test-003): 桂枝汤主营卫不和" in text
    assert "(citations off)" in text and "(conversation reset)" in text and "usage: /cite on|off" in text
    assert "unknown command /nope" in text


def test_session_history_and_reset(engine: Any, index: Any) -> None:
    s = ChatSession(engine, index, ChatConfig(max_tokens=4))
    pieces: list[str] = []
    answer, cites = s.ask("脉浮", pieces.append)
    assert answer == "".join(pieces) and len(s.history) == 2 and cites[0]["id"] == "test-002"
    s.ask("再说", pieces.append)
    assert [m["role"] for m in s.history] == ["user", "assistant"] * 2
    assert s.command("/reset") == "(conversation reset)" and s.history == []
    s2 = ChatSession(engine, None, ChatConfig(max_tokens=4))
    assert not s2.cite and "no passages" in (s2.command("/cite on") or "")
