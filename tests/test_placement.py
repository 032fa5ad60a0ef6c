"""Where training runs: CUDA with bf16 (fp16 without it) when a GPU is visible, the CPU in fp32 otherwise; the
choice reaches the trainers as TrainingArguments and the start model's dtype."""

from __future__ import annotations

import pytest

from qihuang.config import ConfigError
from qihuang.placement import Placement, resolve


def test_auto_follows_the_machine() -> None:
    assert resolve(cuda=True, bf16_supported=True) == Placement("cuda", "bf16")
    assert resolve(cuda=True, bf16_supported=False) == Placement("cuda", "fp16")
    assert resolve(cuda=False) == Placement("cpu", "fp32")
    assert resolve("cpu", cuda=True) == Placement("cpu", "fp32")  # a recipe may keep a stage on the CPU
    assert resolve("auto", "fp32", cuda=True) == Placement("cuda", "fp32")


def test_impossible_requests_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"sft\.device: cuda asked for"):
        resolve("cuda", stage="sft", cuda=False)
    with pytest.raises(ConfigError, match=r"dpo\.precision: fp16 needs a GPU"):
        resolve("cpu", "fp16", stage="dpo", cuda=False)
    with pytest.raises(ConfigError, match=r"pretrain\.precision"):
        resolve("auto", "int8", stage="pretrain", cuda=False)


def test_trainer_arguments_and_load_dtype() -> None:
    from transformers import TrainingArguments

    gpu = Placement("cuda", "bf16")
    assert gpu.trainer_args() == {"use_cpu": False, "bf16": True, "fp16": False, "auto_find_batch_size": True}
    assert set(gpu.trainer_args()) <= set(TrainingArguments.__dataclass_fields__)
    assert Placement("cpu", "fp32").trainer_args() == {"use_cpu": True, "bf16": False, "fp16": False,
                                                       "auto_find_batch_size": False}
    assert gpu.load_dtype("lora") == "bfloat16" and gpu.load_dtype("full") == "float32"
    assert Placement("cuda", "fp16").load_dtype("lora") == "float16"
    assert Placement("cpu", "fp32").load_dtype("lora") == "float32"
    assert gpu.accelerate_mixed_precision == "bf16" and Placement("cpu", "fp32").accelerate_mixed_precision == "no"


def test_stage_configs_carry_device_and_precision() -> None:
    from qihuang.config import from_mapping
    from qihuang.finetune.preference import DPOConfig
    from qihuang.finetune.sft import SFTConfig
    from qihuang.pretrain import PretrainConfig

    for cls in (SFTConfig, DPOConfig, PretrainConfig):
        cfg = from_mapping(cls, {"device": "cuda", "precision": "bf16"}, where=cls.__name__)
        assert (cfg.device, cfg.precision) == ("cuda", "bf16")
        with pytest.raises(ConfigError):
            from_mapping(cls, {"precision": "fp8"}, where=cls.__name__)
