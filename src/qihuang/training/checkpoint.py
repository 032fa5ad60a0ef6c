"""Checkpoints: `checkpoints/step-XXXXXXX/` written by accelerate's save_state into a temporary folder, with a
`meta.json` manifest (step, counters, size and SHA-256 of every file) written last, then renamed. A checkpoint
holding non-finite tensors is never written; loading verifies every hash, refuses (and renames to
`refused-step-XXXXXXX/`, reason in REFUSED.txt) a bad one and falls back to the previous one; older checkpoints
are deleted only after the new one verified."""

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


def refuse_checkpoint(path: Path, reason: str) -> Path:
    """Rename a refused checkpoint to `refused-<name>` (never loaded, counted or pruned again), reason inside."""
    target = path.parent / f"refused-{path.name}"
    try:
        if target.exists():
            shutil.rmtree(target)
        path.rename(target)
        (target / REFUSED).write_text(reason + "\n", encoding="utf-8")
    except OSError as exc:  # another process renamed it first, or a read-only disk: the warning still names it
        log.warning("could not rename refused checkpoint %s: %s", path, exc)
        return path
    return target


def save_checkpoint(accelerator: Any, root: Path, step: int, meta: dict[str, Any], keep: int = 2,
                    warn: Any = None) -> Path | None:
    """Save model/optimizer/RNG state + manifest atomically as root/step-XXXXXXX; after it verifies, keep the
    newest `keep`. None (nothing written, nothing deleted) when the state holds non-finite tensors."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    saved: Path | None = final
    if accelerator.is_main_process:
        saved = _finish(tmp, final, step, meta, warn)
        if saved is not None:
            for old in list_checkpoints(root)[max(keep, 1):]:
                if old != saved:
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return saved


def _finish(tmp: Path, final: Path, step: int, meta: dict[str, Any], warn: Any) -> Path | None:
    """Main process: refuse non-finite state, write the manifest last, rename, verify; the verified path."""
    bad = nonfinite_tensors(tmp)
    if bad:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"not saving checkpoint {final}: {len(bad)} non-finite tensor(s), e.g. {', '.join(bad[:3])}"
        log.warning(msg)
        if warn:
            warn(msg)
        return None
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
    try:
        verify_checkpoint(final, finite=False)
    except CheckpointError as exc:
        msg = f"refusing checkpoint just written {refuse_checkpoint(final, str(exc))}: {exc}"
        log.warning(msg)
        if warn:
            warn(msg)
        return None
    return final


def verify_checkpoint(path: Path, finite: bool = True) -> dict[str, Any]:
    """meta.json of `path` after checking every recorded file is present with its recorded size and SHA-256,
    every safetensors header parses and (with `finite`) no tensor holds inf/NaN; CheckpointError otherwise."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable {META} ({exc})") from exc
    for rel, size in meta.get("files", {}).items():
        f = path / rel
        if not f.is_file() or f.stat().st_size != size:
            raise CheckpointError(f"{f}: missing or truncated (expected {size} bytes)")
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="pt") as st:
                    list(st.keys())
            except Exception as exc:
                raise CheckpointError(f"{f}: corrupt safetensors ({exc})") from exc
    for rel, digest in meta.get("sha256", {}).items():
        if sha256_file(path / rel) != digest:
            raise CheckpointError(f"{path / rel}: content does not match its SHA-256 (corrupted)")
    bad = nonfinite_tensors(path) if finite else []
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} non-finite tensor(s), e.g. {', '.join(bad[:3])}")
    return meta


def load_latest(accelerator: Any, root: Path, warn: Any = None) -> dict[str, Any] | None:
    """Load the newest checkpoint that verifies and loads; refused ones are reported (path + reason) through
    `warn` and the previous one is tried. None if there is no checkpoint; CheckpointError if all fail."""
    refused: list[str] = []
    for path in list_checkpoints(root):
        try:
            meta = verify_checkpoint(path)
            accelerator.load_state(str(path))
            if refused and warn:
                warn(f"resumed from older checkpoint {path}")
            return meta
        except Exception as exc:
            moved = refuse_checkpoint(path, str(exc)) if accelerator.is_main_process else path
            msg = f"refusing checkpoint {path} (now {moved.name}): {exc}"
            refused.append(msg)
            log.warning(msg)
            if warn:
                warn(msg)
    if refused:
        raise CheckpointError("no usable checkpoint:\n" + "\n".join(refused))
    return None
