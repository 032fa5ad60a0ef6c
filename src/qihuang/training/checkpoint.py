"""Checkpoints: `checkpoints/step-XXXXXXX/` written by accelerate's save_state into a temporary folder, with a
`meta.json` (step, counters, file sizes) written last, then renamed; loading verifies and falls back."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
META = "meta.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint could be loaded (each refused one is named)."""


def list_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints (those with meta.json), newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / META).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def save_checkpoint(accelerator: Any, root: Path, step: int, meta: dict[str, Any], keep: int = 2) -> Path:
    """Save model/optimizer/RNG state + meta atomically as root/step-XXXXXXX; keep the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        with open(tmp / META, "w", encoding="utf-8") as fh:
            json.dump({**meta, "step": step, "files": sizes}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """meta.json of `path` after checking every recorded file is present with its recorded size and every
    safetensors header parses; raises CheckpointError naming the path otherwise."""
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
            msg = f"refusing checkpoint {path}: {exc}"
            refused.append(msg)
            log.warning(msg)
            if warn:
                warn(msg)
    if refused:
        raise CheckpointError("no usable checkpoint:\n" + "\n".join(refused))
    return None
