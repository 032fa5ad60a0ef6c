"""Verified checkpoints (issue #16, defect 1): SHA-256 manifest checked at load, no non-finite checkpoint is
written, a refused checkpoint is named and renamed, and the last good one is never deleted for a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qihuang.training.checkpoint import (
    REFUSED, CheckpointError, list_checkpoints, load_latest, save_checkpoint, verify_checkpoint,
)


class FakeAccelerator:
    """Single process; save_state/load_state write and read one safetensors file plus an optimizer blob."""

    is_main_process = True

    def __init__(self) -> None:
        import torch

        self.tensors: dict[str, Any] = {"w": torch.arange(600_000, dtype=torch.float32)}
        self.loaded: dict[str, Any] | None = None

    def wait_for_everyone(self) -> None:
        return None

    def save_state(self, path: str) -> None:
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        save_file(self.tensors, str(Path(path) / "model.safetensors"))
        (Path(path) / "optimizer.bin").write_bytes(b"opt" * 100)

    def load_state(self, path: str) -> None:
        from safetensors.torch import load_file

        self.loaded = load_file(str(Path(path) / "model.safetensors"))


def _corrupt_middle(f: Path) -> None:
    """Overwrite bytes in the middle of `f`, keeping its size and its header (what defect 1 did with 8 MB)."""
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 200_000] = b"\xff" * 200_000  # 0xffffffff is a NaN as float32
    f.write_bytes(bytes(data))


def test_corrupted_checkpoint_is_refused_and_previous_loaded(tmp_path: Path) -> None:
    # defect 1: same size, same header, garbage inside: the old size/header check loaded it
    acc, warnings = FakeAccelerator(), []
    for step in (1, 2):
        assert save_checkpoint(acc, tmp_path, step, {"n": step}, keep=2) == tmp_path / f"step-{step:07d}"
    newest = tmp_path / "step-0000002" / "model.safetensors"
    size = newest.stat().st_size
    _corrupt_middle(newest)
    assert newest.stat().st_size == size
    meta = load_latest(acc, tmp_path, warnings.append)
    assert meta is not None and meta["step"] == 1
    assert any("step-0000002" in w and "SHA-256" in w for w in warnings), warnings
    refused = tmp_path / "refused-step-0000002"
    assert refused.is_dir() and "SHA-256" in (refused / REFUSED).read_text(encoding="utf-8")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]  # never tried again


def test_nonfinite_state_is_never_saved_and_good_one_kept(tmp_path: Path) -> None:
    import torch

    acc, warnings = FakeAccelerator(), []
    save_checkpoint(acc, tmp_path, 1, {}, keep=1)
    acc.tensors = {"w": torch.tensor([1.0, float("nan"), float("inf")])}
    assert save_checkpoint(acc, tmp_path, 2, {}, keep=1, warn=warnings.append) is None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]  # the last good one survives
    assert not (tmp_path / "step-0000002").exists() and not (tmp_path / ".tmp-step-0000002").exists()
    assert warnings and "non-finite" in warnings[0]


def test_newer_checkpoint_pruned_only_after_it_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qihuang.training.checkpoint as ck

    acc = FakeAccelerator()
    save_checkpoint(acc, tmp_path, 1, {}, keep=1)

    def broken(path: Path, finite: bool = True) -> dict[str, Any]:
        raise CheckpointError(f"{path}: simulated disk error")

    monkeypatch.setattr(ck, "verify_checkpoint", broken)
    assert save_checkpoint(acc, tmp_path, 2, {}, keep=1) is None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert (tmp_path / "refused-step-0000002" / REFUSED).exists()


def test_nonfinite_checkpoint_written_before_the_fix_is_refused(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    acc = FakeAccelerator()
    save_checkpoint(acc, tmp_path, 1, {}, keep=2)
    path = save_checkpoint(acc, tmp_path, 2, {}, keep=2)
    assert path is not None
    save_file({"w": torch.tensor([float("nan")])}, str(path / "model.safetensors"))
    meta_text = (path / "meta.json").read_text(encoding="utf-8")
    (path / "meta.json").write_text(meta_text.replace('"sha256"', '"old_sha256"'), encoding="utf-8")
    with pytest.raises(CheckpointError, match="non-finite|truncated"):
        verify_checkpoint(path)
    assert load_latest(acc, tmp_path)["step"] == 1  # type: ignore[index]
