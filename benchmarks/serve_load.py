"""Load test of `qihuang serve` on loopback, three phases against one live server in one run: one streaming client
alone (the baseline), 16 concurrent streams (continuous batching: aggregate tokens/s against one stream's), then
`--clients` at once (how many complete / get 503 / fail; p50/p99 latency and time to first token).

    python benchmarks/serve_load.py                       # smollm2-135m, 64 new tokens, 2 threads
    python benchmarks/serve_load.py --smoke               # tiny random model, seconds (CI)
Starts its own server (uvicorn in a thread, 127.0.0.1, random port) unless --url is given.
Ends with: RESULT serve_load_16_streams <tokens/s> tokens/s baseline=<one stream tokens/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

QUESTIONS = ["桂枝汤主治什么？", "脉浮而紧说明什么？", "人参有什么功效？", "何为阴阳？", "伤寒与温病有何不同？",
             "麻黄汤的组成是什么？", "黄连的性味如何？", "春季应当如何养生？"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


async def one_client(client: httpx.AsyncClient, url: str, i: int, max_tokens: int,
                     headers: dict[str, str]) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                return {"status": r.status_code, "latency": time.perf_counter() - t0}
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
            return {"status": 200 if done else -1, "latency": time.perf_counter() - t0, "ttft": first,
                    "tokens": tokens}
    except httpx.HTTPError as exc:
        return {"status": -2, "latency": time.perf_counter() - t0, "error": type(exc).__name__}


async def run_clients(url: str, clients: int, max_tokens: int, key: str | None, timeout_s: float) -> list[dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=clients + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        tasks = [one_client(client, url, i, max_tokens, headers) for i in range(clients)]
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout_s + 30)


def start_local_server(args: argparse.Namespace) -> tuple[str, Any]:
    import uvicorn

    from qihuang.serve.app import create_app
    from qihuang.serve.engine import Engine
    from qihuang.retrieval import PassageIndex
    from qihuang.serve.settings import ServeConfig

    engine = Engine.load(args.model, max_batch=args.concurrency)
    index = PassageIndex.open(args.passages) if args.passages and Path(args.passages).exists() else None
    cfg = ServeConfig(max_concurrency=args.concurrency, max_queue=args.queue, max_tokens=max(args.max_tokens, 1),
                      queue_timeout_s=args.timeout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, index, cfg), host="127.0.0.1", port=port,
                                           log_level="warning", backlog=2048))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    print(f"server: model={engine.name} passages={len(index.passages) if index else 0} "
          f"concurrency={args.concurrency} queue={args.queue}", flush=True)
    return f"http://127.0.0.1:{port}", server


def phase(url: str, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """`clients` concurrent streams; their summary (tokens/s over the phase's wall time)."""
    t0 = time.perf_counter()
    rows = asyncio.run(run_clients(url, clients, args.max_tokens, args.key, args.timeout))
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["status"] == 200]
    errors = [r for r in rows if r["status"] not in (200, 503)]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "ok": len(ok), "busy_503": sum(1 for r in rows if r["status"] == 503),
            "errors": len(errors), "error_kinds": sorted({str(r.get("error", r["status"])) for r in errors}),
            "wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "latency_p50_s": round(percentile(lat, 50), 3), "latency_p99_s": round(percentile(lat, 99), 3),
            "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="", help="an already running server (else one is started here)")
    ap.add_argument("--key", default=os.environ.get("QIHUANG_API_KEY"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--passages", default="", help="passages JSONL for retrieval (default: none)")
    ap.add_argument("--clients", type=int, default=64, help="clients of the last phase")
    ap.add_argument("--streams", type=int, default=16, help="concurrent streams of the batching phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16, help="the server's max_concurrency (= batch rows)")
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 8 tokens, 4 streams, 8 clients")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.max_tokens, args.streams, args.clients, args.concurrency = "tiny-llama", 8, 4, 8, 4

    import torch

    torch.set_num_threads(args.threads)
    server = None
    url = args.url
    if not url:
        url, server = start_local_server(args)
    phase(url, 1, args)  # warm-up: first-call allocations, thread pools
    one = phase(url, 1, args)
    many = phase(url, args.streams, args)
    load = phase(url, args.clients, args)
    if server is not None:
        server.should_exit = True
    for name, row in (("one stream", one), (f"{args.streams} streams", many), (f"{args.clients} clients", load)):
        print(f"{name}: {json.dumps(row)}", flush=True)
    ratio = many["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else float("nan")
    print(f"{args.clients} clients: ok={load['ok']} busy503={load['busy_503']} errors={load['errors']} "
          f"ttft_p50={load['ttft_p50_s']}s latency_p50={load['latency_p50_s']}s p99={load['latency_p99_s']}s")
    print(f"RESULT serve_load_{args.streams}_streams {many['tokens_per_s']:.1f} tokens/s "
          f"baseline={one['tokens_per_s']:.1f} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
