"""A small OpenAI-compatible teacher for tests and benchmarks: a FastAPI app served by uvicorn on a real loopback
socket. It reads the passage out of the prompt and answers with grounded pairs, and can be told (per passage id,
attempt by attempt) to time out, return 429/500, return a malformed body, die mid-response, or answer badly
(off-passage, unparseable, English, empty, fenced JSON, numbered 问/答 list)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

OPEN, CLOSE = "<<<原文", "原文>>>"
FABRICATED = [
    "该病主要依靠现代实验室检测确诊，并配合抗生素与激素治疗，一般两周即可痊愈。",
    "本方由西洋参、冬虫夏草、灵芝组成，长期服用可以提高免疫力并降低血糖。",
    "作者认为应当每天慢跑五公里，同时多喝咖啡以促进新陈代谢。",
]


@dataclass
class Behaviour:
    """What the server does: `faults[passage_key]` lists the fault for attempt 1, 2, …; `mode` the reply style."""

    faults: dict[str, list[str]] = field(default_factory=dict)
    mode: str = "good"
    modes: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: float = 5.0
    allow: int | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    auth: list[str] = field(default_factory=list)
    usage: Any = None
    """When set, the reply's `usage` field verbatim (malformed ones: `"x"`, {"prompt_tokens": "n/a"})."""
    mix: bool = False
    """Pick a reply style and a first-attempt fault per passage from a hash of its text (demo runs)."""

    def plan_for(self, pk: str) -> tuple[str, list[str]]:
        if not self.mix:
            return self.modes.get(pk, self.mode), self.faults.get(pk, [])
        h = int(hashlib.md5(pk.encode()).hexdigest(), 16)
        r1, r2 = h % 100, (h // 100) % 100
        mode = ("offpassage" if r1 < 6 else "unparseable" if r1 < 10 else "english" if r1 < 12 else
                "empty" if r1 < 14 else "numbered" if r1 < 20 else "fenced" if r1 < 26 else "good")
        fault = ["429"] if r2 < 6 else ["500"] if r2 < 10 else ["die"] if r2 < 13 else ["malformed"] if r2 < 15 else []
        return mode, fault


def _passage(messages: list[dict[str, str]]) -> tuple[str, str]:
    user = next((m["content"] for m in messages if m.get("role") == "user"), "")
    m = re.search(re.escape(OPEN) + r"\n(.*?)\n" + re.escape(CLOSE), user, re.S)
    text = m.group(1) if m else ""
    book = re.search(r"《(.*?)》", user)
    return text, book.group(1) if book else ""


def passage_key(text: str) -> str:
    """The key the fault plan is indexed by: the first 12 characters of the passage text."""
    return text[:12]


def grounded_items(text: str, book: str) -> list[dict[str, str]]:
    sents = [s for s in re.findall(r"[^。！？]*[。！？]", text) if len(s) >= 12 and "（" not in s] or [text]
    items = []
    for i, s in enumerate(sents[:4]):
        items.append({"type": ("原文释义", "名词概念", "追问", "出处")[i % 4],
                      "question": f"《{book}》中“{s[:8]}”这一句讲的是什么？（第{i + 1}问）",
                      "answer": f"原文写道：“{s}”", "evidence": s})
    return items


def reply_content(mode: str, text: str, book: str) -> str:
    items = grounded_items(text, book)
    if mode == "good":
        return json.dumps(items, ensure_ascii=False)
    if mode == "fenced":
        return "好的，以下是问答：\n```json\n" + json.dumps({"pairs": items}, ensure_ascii=False) + "\n```"
    if mode == "numbered":
        return "\n".join(f"{i + 1}. 问：{it['question']}\n   答：{it['answer']}" for i, it in enumerate(items))
    if mode == "offpassage":
        return json.dumps([{"type": "名词概念", "question": it["question"], "answer": FABRICATED[i % 3]}
                           for i, it in enumerate(items)], ensure_ascii=False)
    if mode == "unparseable":
        return "这段原文意义深远，值得反复研读，我就不一一列出问答了。"
    if mode == "english":
        return "Sorry, I can only answer in English and cannot produce the requested pairs."
    if mode == "empty":
        return ""
    raise ValueError(mode)


def create_app(b: Behaviour) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        b.requests += 1
        b.auth.append(request.headers.get("authorization", ""))
        text, book = _passage(body.get("messages", []))
        pk = passage_key(text)
        key = hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        b.attempts[pk] += 1
        mode, plan = b.plan_for(pk)
        fault = plan[b.attempts[pk] - 1] if b.attempts[pk] <= len(plan) else "ok"
        b.in_flight += 1
        b.max_in_flight = max(b.max_in_flight, b.in_flight)
        try:
            if fault == "timeout":
                await asyncio.sleep(b.hang)
            if b.delay:
                await asyncio.sleep(b.delay)
            while b.allow is not None and b.allow <= 0:  # gate: hold the response until allowed
                if await request.is_disconnected():
                    return PlainTextResponse("client gone", status_code=499)
                await asyncio.sleep(0.01)
            if b.allow is not None:
                b.allow -= 1
            if fault == "429":
                return JSONResponse({"error": {"message": "rate limited"}}, status_code=429,
                                    headers={"Retry-After": "0"})
            if fault == "500":
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if fault == "400":
                return JSONResponse({"error": {"message": "bad request"}}, status_code=400)
            if fault == "malformed":
                return PlainTextResponse('{"choices": [{"message": {"content": "半截', media_type="application/json")
            user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
            if "这个答案的内容是否都能" in user:  # the grounding judge: supported iff the answer quotes the text
                answer = re.search(r"\n答案：(.*)\n", user)
                quoted = answer is not None and any(answer.group(1)[i : i + 6] in text
                                                    for i in range(max(1, len(answer.group(1)) - 5)))
                content = json.dumps({"supported": quoted, "reason": "测试"}, ensure_ascii=False)
            else:
                content = reply_content(mode, text, book)
            payload = json.dumps({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": b.usage if b.usage is not None else {
                    "prompt_tokens": len(json.dumps(body, ensure_ascii=False)) // 2,
                    "completion_tokens": len(content) or 1,
                    "total_tokens": len(json.dumps(body, ensure_ascii=False)) // 2 + len(content)},
            }, ensure_ascii=False)
            if fault == "die":
                async def dying() -> Any:
                    yield payload[: len(payload) // 2].encode()
                    raise ConnectionResetError("server died mid-response")

                return StreamingResponse(dying(), media_type="application/json")
            b.served[key] += 1
            return PlainTextResponse(payload, media_type="application/json")
        finally:
            b.in_flight -= 1

    return app


class FakeTeacher:
    """Runs the app with uvicorn in a thread on 127.0.0.1 (a real socket); `url` is the OpenAI base URL."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.b = behaviour or Behaviour()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        cfg = uvicorn.Config(create_app(self.b), log_level="critical", access_log=False, lifespan="off",
                             timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> FakeTeacher:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("fake teacher did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


def served_total(b: Behaviour) -> int:
    return sum(b.served.values())


def by_passage(b: Behaviour) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for k, v in b.attempts.items():
        out[k] += v
    return dict(out)


def main() -> None:
    """`python -m tests.instruct.fake_teacher --port P [--delay S]`: serve until killed (for benchmarks)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--mix", action="store_true", help="mixed reply styles and faults per passage (demo)")
    args = ap.parse_args()
    uvicorn.run(create_app(Behaviour(delay=args.delay, mix=args.mix)), host="127.0.0.1", port=args.port, log_level="critical",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
