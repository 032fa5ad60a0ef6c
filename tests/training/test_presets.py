"""The shipped accelerate presets parse and name the engine they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import qihuang

PRESETS = Path(qihuang.__file__).parent / "accelerate_configs"


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("deepspeed_zero2", "DEEPSPEED"),
                                       ("deepspeed_zero3", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_preset(name: str, kind: str) -> None:
    cfg = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    assert cfg["distributed_type"] == kind and cfg["mixed_precision"] == "bf16"
    if kind == "DEEPSPEED":
        assert cfg["deepspeed_config"]["zero_stage"] == int(name[-1])
    from accelerate.commands.config.config_args import ClusterConfig

    ClusterConfig.from_yaml_file(str(PRESETS / f"{name}.yaml"))
