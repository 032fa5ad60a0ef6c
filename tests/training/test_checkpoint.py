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
    # a disk error while the new checkpoint is hashed: it is refused (evidence kept), the old one survives
    import qihuang.training.checkpoint as ck

    acc = FakeAccelerator()
    save_checkpoint(acc, tmp_path, 1, {}, keep=1)

    def broken(path: Path) -> str:
        raise OSError(f"{path}: simulated disk error")

    monkeypatch.setattr(ck, "sha256_file", broken)
    assert save_checkpoint(acc, tmp_path, 2, {}, keep=1) is None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert (tmp_path / "refused-step-0000002" / REFUSED).exists()
    assert "simulated disk error" in (tmp_path / "refused-step-0000002" / REFUSED).read_text(encoding="utf-8")
    assert not (tmp_path / ".tmp-step-0000002").exists()


def test_save_does_not_reread_the_checkpoint_after_the_rename(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import qihuang.training.checkpoint as ck

    calls: list[Path] = []
    real = ck.sha256_file
    monkeypatch.setattr(ck, "sha256_file", lambda p: calls.append(p) or real(p))
    assert save_checkpoint(FakeAccelerator(), tmp_path, 1, {}) == tmp_path / "step-0000001"
    assert len(calls) == 2 and all(".tmp-step-0000001" in str(p) for p in calls)  # each file hashed once


def test_nonfinite_checkpoint_written_before_the_fix_is_refused(tmp_path: Path) -> None:
    # a checkpoint without a SHA-256 manifest (written before it existed) is still scanned for NaN: same shape,
    # same size, one NaN, so the NaN scan (not the size or hash check) is what refuses it
    import torch
    from safetensors.torch import save_file

    acc = FakeAccelerator()
    save_checkpoint(acc, tmp_path, 1, {}, keep=2)
    path = save_checkpoint(acc, tmp_path, 2, {}, keep=2)
    assert path is not None
    size = (path / "model.safetensors").stat().st_size
    w = torch.arange(600_000, dtype=torch.float32)
    w[123] = float("nan")
    save_file({"w": w}, str(path / "model.safetensors"))
    assert (path / "model.safetensors").stat().st_size == size
    meta_text = (path / "meta.json").read_text(encoding="utf-8")
    (path / "meta.json").write_text(meta_text.replace('"sha256"', '"old_sha256"'), encoding="utf-8")
    with pytest.raises(CheckpointError, match="non-finite"):
        verify_checkpoint(path)
    assert load_latest(acc, tmp_path)["step"] == 1  # type: ignore[index]
    assert "non-finite" in (tmp_path / "refused-step-0000002" / REFUSED).read_text(encoding="utf-8")


def test_manifest_match_skips_the_nan_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qihuang.training.checkpoint as ck

    acc = FakeAccelerator()
    path = save_checkpoint(acc, tmp_path, 1, {})
    assert path is not None
    monkeypatch.setattr(ck, "nonfinite_tensors", lambda d: pytest.fail("NaN scan of a hashed checkpoint"))
    assert verify_checkpoint(path)["step"] == 1


def test_load_failure_keeps_the_checkpoint_and_tries_the_previous(tmp_path: Path) -> None:
    # a transient load_state error (out of memory, another GPU count) must not hide the checkpoint for good
    acc, warnings = FakeAccelerator(), []
    for step in (1, 2):
        save_checkpoint(acc, tmp_path, step, {}, keep=2)
    real = acc.load_state

    def oom_on_newest(path: str) -> None:
        if path.endswith("step-0000002"):
            raise RuntimeError("CUDA out of memory")
        real(path)

    acc.load_state = oom_on_newest  # type: ignore[method-assign]
    assert load_latest(acc, tmp_path, warnings.append)["step"] == 1  # type: ignore[index]
    assert any("out of memory" in w and "kept" in w for w in warnings), warnings
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000001"]
    assert not list(tmp_path.glob("refused-*"))
    acc.load_state = real  # type: ignore[method-assign]
    assert load_latest(acc, tmp_path)["step"] == 2  # type: ignore[index]

    acc.load_state = lambda path: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))  # type: ignore
    with pytest.raises(CheckpointError, match="out of memory"):  # never a silent restart from step 0
        load_latest(acc, tmp_path)
    assert len(list_checkpoints(tmp_path)) == 2


def test_refusing_again_keeps_the_earlier_refused_checkpoint(tmp_path: Path) -> None:
    acc = FakeAccelerator()
    for _ in range(2):
        save_checkpoint(acc, tmp_path, 1, {}, keep=2)
        _corrupt_middle(tmp_path / "step-0000001" / "model.safetensors")
        with pytest.raises(CheckpointError, match="SHA-256"):
            load_latest(acc, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("refused-*")) == ["refused-step-0000001", "refused-step-0000001.2"]
    assert all((p / REFUSED).exists() for p in tmp_path.glob("refused-*"))


class OtherProcess(FakeAccelerator):
    """A non-main process sharing the filesystem; the main process's part is done by `main`."""

    is_main_process = False

    def __init__(self, main: FakeAccelerator, root: Path, step: int) -> None:
        super().__init__()
        self.main, self.root, self.step, self.barriers = main, root, step, 0

    def save_state(self, path: str) -> None:
        return None

    def wait_for_everyone(self) -> None:
        self.barriers += 1
        if self.barriers == 2:  # the main process saves and finishes between the 2nd and 3rd barrier
            save_checkpoint(self.main, self.root, self.step, {})


def test_other_processes_return_what_the_main_process_saved(tmp_path: Path) -> None:
    import torch

    main = FakeAccelerator()
    assert save_checkpoint(OtherProcess(main, tmp_path, 1), tmp_path, 1, {}) == tmp_path / "step-0000001"
    main.tensors = {"w": torch.tensor([float("nan")])}
    assert save_checkpoint(OtherProcess(main, tmp_path, 2), tmp_path, 2, {}) is None
