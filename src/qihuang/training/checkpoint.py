"""Checkpoints: `checkpoints/step-XXXXXXX/` written by accelerate's save_state into a temporary folder, with a
`meta.json` manifest (step, counters, size and SHA-256 of every file) written last, then renamed. A checkpoint
holding non-finite tensors is never written (the scan runs before the hashes), so a checkpoint whose files match
their manifest hashes is finite. Loading verifies every hash, refuses a checkpoint whose content is proven bad
(renamed to `refused-step-XXXXXXX/`, reason in REFUSED.txt, an earlier refused one of that name kept) and falls
back to the previous one; a checkpoint that fails to *load* (out of memory, another GPU count) is skipped but kept.
Older checkpoints are deleted only after the new one was written completely. Every process must see the same
filesystem (as accelerate's save_state/load_state already require)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from qihuang.runs import sha256_file

log = logging.getLogger(__name__)
META = "meta.json"
REFUSED = "REFUSED.txt"


class CheckpointError(RuntimeError):
    """No usable checkpoint could be loaded (each refused one is named)."""


def list_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints (those with meta.json), newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / META).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def nonfinite_tensors(directory: Path) -> list[str]:
    """`file:tensor` of every floating-point tensor with an inf/NaN in the safetensors files under `directory`."""
    import torch
    from safetensors import safe_open

    bad: list[str] = []
    for f in sorted(directory.rglob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"{f.relative_to(directory)}:{name}")
    return bad


def refuse_checkpoint(path: Path, reason: str, name: str | None = None) -> Path:
    """Rename a refused checkpoint to `refused-<name>` (never loaded, counted or pruned again), reason inside; an
    earlier refused checkpoint of the same name is kept (the new one gets `refused-<name>.2`, `.3`, ...)."""
    name = name or path.name
    target = path.parent / f"refused-{name}"
    n = 1
    while target.exists():
        n += 1
        target = path.parent / f"refused-{name}.{n}"
    try:
        path.rename(target)
        (target / REFUSED).write_text(reason + "\n", encoding="utf-8")
    except OSError as exc:  # another process renamed it first, or a read-only disk: the warning still names it
        log.warning("could not rename refused checkpoint %s: %s", path, exc)
        return path
    return target


def save_checkpoint(accelerator: Any, root: Path, step: int, meta: dict[str, Any], keep: int = 2,
                    warn: Any = None) -> Path | None:
    """Save model/optimizer/RNG state + manifest atomically as root/step-XXXXXXX; once it is complete, keep the
    newest `keep`. None (nothing written, nothing deleted) when the state holds non-finite tensors or could not
    be hashed. Every process returns the same answer (read from the shared filesystem after the main process
    finished)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    saved: Path | None = None
    if accelerator.is_main_process:
        saved = _finish(tmp, final, step, meta, warn)
        if saved is not None:
            for old in list_checkpoints(root)[max(keep, 1):]:
                if old != saved:
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # what the main process decided, as the shared filesystem shows it
        saved = final if (final / META).is_file() else None
    return saved


def _finish(tmp: Path, final: Path, step: int, meta: dict[str, Any], warn: Any) -> Path | None:
    """Main process: refuse non-finite state, hash every file, write the manifest last, rename; the final path.
    The files are not re-read after the rename (that would read the page cache, not the disk): they are
    verified against the manifest when loaded."""

    def refuse(msg: str) -> None:
        log.warning(msg)
        if warn:
            warn(msg)

    bad = nonfinite_tensors(tmp)
    if bad:
        shutil.rmtree(tmp, ignore_errors=True)
        refuse(f"not saving checkpoint {final}: {len(bad)} non-finite tensor(s), e.g. {', '.join(bad[:3])}")
        return None
    try:
        files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in files}
        hashes = {str(p.relative_to(tmp)): sha256_file(p) for p in files}
        with open(tmp / META, "w", encoding="utf-8") as fh:
            json.dump({**meta, "step": step, "files": sizes, "sha256": hashes}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as exc:  # a disk error while hashing or writing: keep the evidence, never prune for it
        refuse(f"not saving checkpoint {final} ({exc}): kept as {refuse_checkpoint(tmp, str(exc), final.name)}")
        return None
    return final


def verify_checkpoint(path: Path, finite: bool = True) -> dict[str, Any]:
    """meta.json of `path` after checking every recorded file is present with its recorded size and SHA-256;
    CheckpointError (the content is proven bad) otherwise. A checkpoint whose manifest hashes every file was
    scanned for non-finite tensors before it was hashed, so matching hashes suffice. An older checkpoint without
    hashes is checked the old way: every safetensors header parses and (with `finite`) no tensor holds inf/NaN."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable {META} ({exc})") from exc
    sizes: dict[str, int] = meta.get("files", {})
    hashes: dict[str, str] = meta.get("sha256", {})
    hashed = bool(hashes) and set(sizes) <= set(hashes)
    for rel, size in sizes.items():
        f = path / rel
        if not f.is_file() or f.stat().st_size != size:
            raise CheckpointError(f"{f}: missing or truncated (expected {size} bytes)")
    for rel, digest in hashes.items():
        if sha256_file(path / rel) != digest:
            raise CheckpointError(f"{path / rel}: content does not match its SHA-256 (corrupted)")
    if hashed:
        return meta
    from safetensors import safe_open

    for rel in sizes:
        if rel.endswith(".safetensors"):
            try:
                with safe_open(str(path / rel), framework="pt") as st:
                    list(st.keys())
            except Exception as exc:
                raise CheckpointError(f"{path / rel}: corrupt safetensors ({exc})") from exc
    bad = nonfinite_tensors(path) if finite else []
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} non-finite tensor(s), e.g. {', '.join(bad[:3])}")
    return meta


def load_latest(accelerator: Any, root: Path, warn: Any = None) -> dict[str, Any] | None:
    """Load the newest checkpoint that verifies and loads, trying the previous one after each failure (reported,
    path + reason, through `warn`). One whose content is proven bad (CheckpointError) is renamed `refused-*` by
    the main process once every process has verified it; one that merely failed to load or to be read (out of
    memory, another GPU count, an I/O error) is kept for a later try. None if there is no checkpoint;
    CheckpointError if all fail."""
    failed: list[str] = []

    def report(msg: str) -> None:
        failed.append(msg)
        log.warning(msg)
        if warn:
            warn(msg)

    for path in list_checkpoints(root):
        try:
            meta = verify_checkpoint(path)
        except CheckpointError as exc:
            accelerator.wait_for_everyone()  # no process is still reading it when it is renamed
            if accelerator.is_main_process:
                report(f"refusing checkpoint {path} (now {refuse_checkpoint(path, str(exc)).name}): {exc}")
            else:
                report(f"refusing checkpoint {path}: {exc}")
            continue
        except Exception as exc:  # could not be read now: not proven bad, so kept
            report(f"could not verify checkpoint {path} (kept): {type(exc).__name__}: {exc}")
            continue
        try:
            accelerator.load_state(str(path))
        except Exception as exc:  # e.g. out of memory or another number of processes: the files are fine
            report(f"could not load checkpoint {path} (kept): {type(exc).__name__}: {exc}")
            continue
        if failed and warn:
            warn(f"resumed from older checkpoint {path}")
        return meta
    if failed:
        raise CheckpointError("no usable checkpoint:\n" + "\n".join(failed))
    return None
