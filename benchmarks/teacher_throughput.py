"""Benchmark: teacher requests in flight and throughput against a loopback OpenAI-compatible server answering
in 200 ms, vs sequential requests (concurrency 1) in the same run.

The server is the test suite's fake teacher (FastAPI + uvicorn) in its own process on 127.0.0.1; the client is
the real `qihuang.instruct.selfqa.run_teacher` (httpx, retries, rate limiter, cache, parsing) over synthetic
passages, each a distinct prompt, with a fresh cache so every passage costs one request.

Both the config default (32 in flight) and `--concurrency` (64) are measured; the RESULT line is the latter.

Run:  python benchmarks/teacher_throughput.py [--requests 1000] [--concurrency 64] [--delay 0.2]
      python benchmarks/teacher_throughput.py --smoke    (200 requests, 5 sequential, 50 ms latency: seconds)
Ends with: RESULT teacher_throughput <req/s> req/s baseline=<sequential req/s> ratio=<x>
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from qihuang.instruct.records import Passage  # noqa: E402
from qihuang.instruct.selfqa import run_teacher  # noqa: E402
from qihuang.instruct.settings import InstructConfig  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def passages(n: int, tag: str) -> list[Passage]:
    rng = random.Random(tag)
    vocab = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
    out = []
    for i in range(n):
        text = "。".join("".join(rng.choices(vocab, k=14)) for _ in range(6)) + "。"
        out.append(Passage(id=f"{tag}{i}", book="拟书", category="方书", section="卷一", start=0, end=len(text),
                           text=text))
    return out


def run(url: str, ps: list[Passage], concurrency: int) -> tuple[float, dict]:
    cfg = InstructConfig(teacher_url=url, teacher_model="fake", generators=[], concurrency=concurrency,
                         rpm=1_000_000, tpm=1_000_000_000, timeout=30, max_retries=3, backoff=0.05)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        pairs, rejects, stats = run_teacher(cfg, ps, Path(cache))
        dt = time.perf_counter() - t0
    assert not rejects and stats["requests"] == len(ps), (len(rejects), stats)
    return len(ps) / dt, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--default-concurrency", type=int, default=32, help="also measured: the config default")
    ap.add_argument("--baseline-requests", type=int, default=25)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--smoke", action="store_true", help="200 requests, 5 sequential, 50 ms latency (seconds, CI)")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.baseline_requests, args.delay = 200, 5, 0.05
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.instruct.fake_teacher", "--port", str(port), "--delay",
                               str(args.delay)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/models", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        base, _ = run(url, passages(args.baseline_requests, "s"), 1)
        print(f"sequential: {args.baseline_requests} requests at {base:.1f} req/s "
              f"(server latency {args.delay * 1000:.0f} ms)")
        d_rate, d_stats = run(url, passages(args.requests, "d"), args.default_concurrency)
        print(f"concurrent: {args.requests} requests, concurrency {args.default_concurrency} (InstructConfig default): "
              f"{d_rate:.1f} req/s, max in flight {d_stats['max_in_flight']}")
        cpu0, srv0 = time.process_time(), server_cpu(server.pid)
        rate, stats = run(url, passages(args.requests, "c"), args.concurrency)
        cpu_client, cpu_server = time.process_time() - cpu0, server_cpu(server.pid) - srv0
        print(f"CPU for the concurrent run: client {cpu_client:.1f}s ({cpu_client / args.requests * 1000:.1f} ms/request), "
              f"server {cpu_server:.1f}s ({cpu_server / args.requests * 1000:.1f} ms/request)")
        print(f"concurrent: {args.requests} requests, concurrency {args.concurrency}: {rate:.1f} req/s, "
              f"max in flight {stats['max_in_flight']}, retries {stats['retries']}, "
              f"tokens {stats['prompt_tokens'] + stats['completion_tokens']:,}, "
              f"load average {os.getloadavg()[0]:.1f}")
        ok = stats["max_in_flight"] >= 30 and rate >= 100
        print(f"target: >= 30 in flight and >= 100 req/s -> {'OK' if ok else 'MISSED'}")
        print(f"RESULT teacher_throughput {rate:.1f} req/s baseline={base:.1f} ratio={rate / base:.1f}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
