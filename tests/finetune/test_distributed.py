"""The helpers that keep the processes of an `accelerate launch` run in step (two real gloo processes), and the
warning for an FSDP config that accelerate runs as DDP on the CPU."""

from __future__ import annotations

import multiprocessing as mp
import os
from types import SimpleNamespace
from typing import Any

import pytest

from qihuang.finetune.distributed import agree, from_main, mode_warning, total, wrap_after_evaluate


def _rank(rank: int, port: int, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    from accelerate import PartialState

    import torch.distributed as dist

    state = PartialState(cpu=True)
    out.put((rank, from_main(f"rank-{rank}"), agree(rank == 1, 10 + rank), agree(False, None), total(rank + 1)))
    state.wait_for_everyone()  # neither process tears gloo down while the other still talks to it (SIGABRT)
    dist.destroy_process_group()


def test_two_processes_follow_one_decision() -> None:
    """Rank 1 alone over its time budget stops both; both fit the schedule to the fewer steps; rank 0's resume
    point and the sum of the token counts reach every process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert results == [(r, "rank-0", (True, 10), (False, None), 3) for r in (0, 1)]


def test_one_process_is_the_identity() -> None:
    assert from_main("x") == "x" and agree(True, 7) == (True, 7) and total(5) == 5
    trainer = SimpleNamespace(accelerator=SimpleNamespace(num_processes=1), model=object())
    wrap_after_evaluate(trainer)  # nothing to wrap in one process


def test_fsdp_asked_but_ddp_run_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.utils import DistributedType

    trainer = SimpleNamespace(accelerator=SimpleNamespace(distributed_type=DistributedType.MULTI_CPU),
                              is_fsdp_enabled=False, is_deepspeed_enabled=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert mode_warning(trainer) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert mode_warning(trainer) == ("accelerate launch asked for FSDP but the trainer runs MULTI_CPU (replicated "
                                     "model, no sharding)")
