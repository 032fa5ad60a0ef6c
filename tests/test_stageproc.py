"""A stage in a process of its own: its result comes back, its exception comes back as itself (with where it was
raised), and a process that dies without one is named with its exit code."""

from __future__ import annotations

import os
import resource

import pytest

from qihuang.config import ConfigError
from qihuang.stageproc import StageProcessError, run_in_process


def grow_and_report(mb: int) -> dict[str, int]:
    block = bytearray(mb * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    return {"pid": os.getpid(), "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def refuse(field: str) -> None:
    raise ConfigError(f"{field}: must be positive")


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def die() -> None:
    os._exit(3)


def test_the_result_comes_back_and_the_memory_stays_in_the_child() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = run_in_process("grow", grow_and_report, 300)
    assert out["pid"] != os.getpid()
    assert out["peak_kb"] > 300 * 1024
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < before + 100 * 1024  # the parent never held it


def test_the_stage_exception_is_raised_as_itself_with_its_origin() -> None:
    with pytest.raises(ConfigError, match="learning_rate: must be positive") as caught:
        run_in_process("refuse", refuse, "learning_rate")
    assert any("refuse" in note and "own process" in note for note in caught.value.__notes__)


def test_an_exception_that_does_not_pickle_comes_back_as_text() -> None:
    with pytest.raises(StageProcessError, match=r"Unpicklable: 1/2"):
        run_in_process("odd", raise_unpicklable)


def test_a_process_dying_without_an_exception_is_named_with_its_exit_code() -> None:
    with pytest.raises(StageProcessError, match=r"stage gone: .*exit code 3"):
        run_in_process("gone", die)
