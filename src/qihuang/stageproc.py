"""Run one recipe stage in a fresh process (spawned, so it starts from no heap at all): a run's peak memory is then
its largest stage's, not what one long process accumulates, and the stage's exception reaches the caller."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any


class StageProcessError(RuntimeError):
    """A stage's process failed with an exception that could not be sent back as itself, or died without one."""


def under_distributed_launch() -> bool:
    """Launched as one of several processes (`accelerate launch`, `torchrun`): the stage must run in this process,
    which its peers wait for in the process group."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _child(conn: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result: tuple[bool, Any] = (True, target(*args))
    except BaseException as exc:  # noqa: BLE001 — everything goes back to the parent, KeyboardInterrupt included
        exc.add_note(f"(raised in the stage's own process:)\n{traceback.format_exc().rstrip()}")
        result = (False, exc)
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 — an exception that does not round-trip goes back as its text
            result = (False, StageProcessError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    try:
        conn.send(result)
    finally:
        conn.close()


def run_in_process(label: str, target: Callable[..., Any], *args: Any) -> Any:
    """`target(*args)` in a spawned process; returns its result or raises its exception (`target` and `args` must
    pickle: a module-level function and plain data). Ctrl-C reaches the child too (same process group); the
    parent waits for it to stop, so a stage's checkpoint is never cut off by the parent's exit."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, target, args), name=f"qihuang-{label}")
    proc.start()
    send.close()
    try:
        try:
            ok, payload = receive.recv()
        except EOFError:
            ok, payload = False, None
        proc.join()
    except BaseException:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        raise
    finally:
        receive.close()
    if ok:
        return payload
    if payload is None:
        raise StageProcessError(f"stage {label}: its process died without an error (exit code {proc.exitcode}; "
                                "-9 is usually the kernel's out-of-memory killer)")
    raise payload
