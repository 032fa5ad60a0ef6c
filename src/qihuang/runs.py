"""Run directories: `runs/<name>/<stage>/` with the resolved config, `metrics.jsonl`, outputs and a `done` marker.

Every file is written to a temporary name and renamed, so a killed stage never leaves a half-written file that a
rerun would take as finished; the `done` marker is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qihuang.config import RENAMED, to_mapping


def sweep_stale_temps(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries `atomic_path` left in `directory` when its process was killed (kill -9): hidden
    `.<name>.tmp-<pid>-*` / `.<name>.old-<pid>` entries whose process is gone (of target `name` only, if given).
    Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = sorted(e.name for e in os.scandir(directory) if e.name.startswith("."))
    except OSError:  # no such folder (or unreadable): nothing to sweep
        return removed
    for entry in entries:
        if name is None:
            m = re.search(r"\.(?:tmp|old)-(\d+)", entry)
        else:
            m = re.match(r"(?:tmp|old)-(\d+)", entry[len(name) + 2:]) if entry.startswith(f".{name}.") else None
        if m is None or _alive(int(m.group(1))):
            continue
        p = Path(directory) / entry
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process may be writing it right now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto `path` (file or directory). Temporaries of
    the same target left by killed processes (kill -9) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent, path.name)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces `path` only if the block completes."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: Path, data: Any) -> None:
    """Atomically write `data` as indented UTF-8 JSON."""
    with atomic_open(path) as fh:
        json.dump(to_mapping(data), fh, ensure_ascii=False, indent=2)
        fh.write("\n")


def write_jsonl(path: Path, records: Iterable[Any]) -> int:
    """Atomically write records as JSON lines; returns the count."""
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(json.dumps(to_mapping(rec), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl_lines(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, JSON object) from a JSONL file, blank lines skipped; a bad line raises `error` naming
    file and line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield JSON objects from a JSONL file; a bad line raises ValueError naming file and line."""
    for _, obj in read_jsonl_lines(path):
        yield obj


@dataclass
class MetricsLog:
    """Append-only `metrics.jsonl`: one JSON object per line, flushed at once so a crash loses nothing."""

    path: Path
    _fh: IO[str] | None = field(default=None, repr=False)

    def log(self, **values: Any) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        values.setdefault("time", round(time.time(), 3))
        self._fh.write(json.dumps(to_mapping(values), ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.path)) if self.path.exists() else []


@dataclass
class StageDir:
    """One stage's folder inside a run: config, metrics, outputs, and the `done` marker written last."""

    path: Path

    @property
    def done_file(self) -> Path:
        return self.path / "done"

    def is_done(self) -> bool:
        return self.done_file.exists()

    def begin(self, config: Any) -> MetricsLog:
        """Create the folder, record the resolved config, and open the metrics log."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / "config.json", config)
        return MetricsLog(self.path / "metrics.jsonl")

    def finish(self, summary: dict[str, Any]) -> None:
        """Write `summary.json`, then the `done` marker."""
        write_json(self.path / "summary.json", summary)
        with atomic_open(self.done_file) as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")

    def metrics(self) -> MetricsLog:
        """The stage's append-only metrics log."""
        self.path.mkdir(parents=True, exist_ok=True)
        return MetricsLog(self.path / "metrics.jsonl")

    def summary(self) -> dict[str, Any]:
        p = self.path / "summary.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


MODEL_STAGES = ("dpo", "sft", "pretrain", "tokenizer")
"""Stages that write a model (`<stage>/model`), the last one first."""


@dataclass
class RunDir:
    """A run folder (`runs/<name>/`): the one place that answers which model it means, for serve, chat, export and
    merge alike."""

    path: Path

    def model_of(self, stage: str) -> Path | None:
        """`<stage>/model` when that stage wrote a model (None otherwise)."""
        cand = Path(self.path) / stage / "model"
        return cand if (cand / "config.json").exists() else None

    def final_model(self) -> Path:
        """The run's final model: the last model stage's `model/` (dpo → sft → pretrain → tokenizer); `merged/`
        (adapters merged in order, with a card) when it is at least as new as that stage — the same weights."""
        from qihuang.models import ModelError

        last = next(((s, m) for s in MODEL_STAGES if (m := self.model_of(s)) is not None), None)
        merged = Path(self.path) / "merged"
        if (merged / "config.json").exists() and (
                last is None or (merged / "config.json").stat().st_mtime >= (last[1] / "config.json").stat().st_mtime):
            return merged
        if last is None:
            raise ModelError(f"{self.path}: neither a model directory nor a run directory with "
                             f"{'/'.join(MODEL_STAGES)}/model or merged/ inside")
        return last[1]


def changed_fields(out: StageDir, config: Any, ignore: frozenset[str] = frozenset()) -> list[str]:
    """Top-level fields of `config` (but `ignore`) whose value differs from the one a finished stage recorded in its
    config.json (compared as JSON, the way it was written; a setting recorded under its earlier name, `RENAMED`, is
    compared with the same setting now); ["(no recorded config)"] when there is none."""
    path = out.path / "config.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["(no recorded config)"]
    new = json.loads(json.dumps(to_mapping(config), ensure_ascii=False))
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new else ["(config)"]
    old = {RENAMED[k] if k in RENAMED and k not in new and RENAMED[k] in new and RENAMED[k] not in old else k: v
           for k, v in old.items()}
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def is_main_process() -> bool:
    """False in the processes other than the first of a distributed launch (`accelerate launch`, `torchrun`: their
    RANK > 0), which train but leave the stage's files to the first; True in a plain single process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def run_stage(out: StageDir, config: Any, work: Callable[[], dict[str, Any]], force: bool = False) -> dict[str, Any]:
    """Run one stage into `out` unless it is already done: record config, time it, write summary and `done`. Under a
    distributed launch every process runs `work`, the main one alone writes config, summary and `done`."""
    if out.is_done() and not force:
        summary = out.summary()
        summary["skipped"] = True
        return summary
    main = is_main_process()
    if main and force and out.done_file.exists():
        out.done_file.unlink()
        # a killed run resumes from its checkpoints; a finished one being rebuilt must not (they belong to the
        # build being replaced: the demo's forced SFT once resumed at step 11 and trained twice its budget)
        shutil.rmtree(out.path / "checkpoints", ignore_errors=True)
    if main:
        out.begin(config)
    else:
        out.path.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    summary = work() or {}
    summary["wall_seconds"] = round(time.time() - t0, 2)
    summary["process_peak_rss_mb"] = peak_rss_mb()
    release_memory()
    if main:
        out.finish(summary)
    return summary


def stage_dir(run_dir: Path, stage: str) -> StageDir:
    """The folder of `stage` inside `run_dir`."""
    return StageDir(Path(run_dir) / stage)


def release_memory() -> None:
    """Between the stages of one process: collect what the finished stage left unreachable and hand the allocator's
    free pages back to the system (glibc `malloc_trim`; elsewhere a no-op), so that the next stage's peak does not
    stand on the last one's leftovers."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def peak_rss_mb() -> float:
    """The largest resident memory of this process or any child it waited for so far (MB; Linux ru_maxrss in KiB)
    — after a stage of a recipe run, the run's peak up to and including that stage."""
    import resource

    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(rss / 1024, 1)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks (checkpoint manifests, corpus downloads, the retrieval
    index's cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            h.update(block)
    return h.hexdigest()
