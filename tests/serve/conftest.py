"""Fixtures of the serving tests: invented passages (never book text), a tiny engine, a live loopback server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Invented passages in a classical register, written for these tests (not quoted from any book).
PASSAGES: list[dict[str, Any]] = [
    {"id": "test-001", "book": "虚构医经", "section": "调神篇", "category": "医经", "dynasty": "测",
     "start": 0, "end": 60, "notes": [],
     "text": "岐伯曰：春日宜早起，缓步于庭，使志生而勿杀。逆之则伤肝，夏为寒变。此调神之大要也。"},
    {"id": "test-002", "book": "虚构医经", "section": "脉象篇", "category": "医经", "dynasty": "测",
     "start": 60, "end": 120, "notes": [],
     "text": "脉浮而缓者，风在表也；脉沉而迟者，寒在里也。察其浮沉迟数，以知病之所在。"},
    {"id": "test-003", "book": "拟方汇编", "section": "桂枝汤条", "category": "方书", "dynasty": "测", "author": "拟医",
     "start": 0, "end": 50, "notes": [],
     "text": "桂枝汤主营卫不和，发热汗出恶风者。桂枝、芍药、生姜、大枣、甘草，五味同煎，啜热粥以助药力。"},
    {"id": "test-004", "book": "拟方汇编", "section": "麻黄汤条", "category": "方书", "dynasty": "测", "author": "拟医",
     "start": 50, "end": 100, "notes": [],
     "text": "麻黄汤主寒邪束表，无汗而喘者。麻黄、桂枝、杏仁、甘草，覆取微似汗，不须啜粥。"},
    {"id": "test-005", "book": "假托本草", "section": "人参", "category": "本草", "dynasty": "测",
     "start": 0, "end": 40, "notes": [],
     "text": "人参味甘微苦，主补五脏，安精神，定魂魄，止惊悸，久服轻身延年。"},
    {"id": "test-006", "book": "假托本草", "section": "黄连", "category": "本草", "dynasty": "测",
     "start": 40, "end": 80, "notes": [],
     "text": "黄连味苦寒，主热气目痛，肠澼腹痛下利。苦能燥湿，寒能清热。"},
]


@pytest.fixture(scope="session")
def passages_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PASSAGES), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def index(passages_file: Path) -> Any:
    from qihuang.retrieval import PassageIndex

    return PassageIndex.open(passages_file, rebuild=True)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Any:
    from qihuang.serve.engine import Engine

    return Engine.load(tiny_model_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A uvicorn server on 127.0.0.1:<random port> running in a thread."""

    url: str
    server: Any
    thread: threading.Thread
    app: Any

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def start_server(app: Any) -> LiveServer:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=3,
                            lifespan="on", backlog=256)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", server, thread, app)


@pytest.fixture(scope="module")
def live(engine: Any, index: Any) -> Iterator[LiveServer]:
    """The app (no keys) served on loopback for one test module."""
    from qihuang.serve.app import create_app
    from qihuang.serve.settings import ServeConfig

    srv = start_server(create_app(engine, index, ServeConfig(max_tokens=64, default_max_tokens=24)))
    yield srv
    srv.stop()


def slow_engine(model_dir: Path, delay_s: float) -> tuple[Any, dict[str, int]]:
    """A real Engine whose every forward pass takes `delay_s` longer (to hold slots); counts forward passes."""
    from qihuang.serve.engine import Engine

    eng = Engine.load(model_dir)
    steps = {"n": 0}
    fast_forward = eng._forward

    def slow_forward(ids: list[int], cache: Any, keep: int) -> Any:
        steps["n"] += 1
        time.sleep(delay_s)
        return fast_forward(ids, cache, keep)

    eng._forward = slow_forward  # type: ignore[method-assign]
    eng.lookup_draft = 0
    return eng, steps
