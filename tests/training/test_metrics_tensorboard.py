"""TensorBoard is opt-in: asked for without the package, a clear warning (stderr and the stage's metrics), not silence."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def test_tensorboard_missing_is_said_not_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from qihuang.pretrain import PretrainConfig
    from qihuang.training.metrics import TensorBoard

    assert PretrainConfig().tensorboard is False  # off unless asked for
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the package is not installed
    warnings: list[str] = []
    tb = TensorBoard(tmp_path / "tb", True, warnings.append)
    tb.log(1, {"loss": 1.0})
    tb.close()
    assert len(warnings) == 1 and "pip install -e '.[tensorboard]'" in warnings[0]
    assert "warning: tensorboard: true, but the tensorboard package is not installed" in capsys.readouterr().err
    assert not (tmp_path / "tb").exists()
    TensorBoard(tmp_path / "tb", False, warnings.append)
    assert len(warnings) == 1  # not asked for: nothing to say
