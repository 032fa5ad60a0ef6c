"""Where training runs: CUDA with bf16 (fp16 without it) when a GPU is visible, the CPU in fp32 otherwise; the
choice reaches the trainers as TrainingArguments and the start model's dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qihuang
from qihuang.config import ConfigError
from qihuang.placement import Placement, check_launch, resolve

PRESETS = Path(qihuang.__file__).parent / "accelerate_configs"


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


def test_a_launch_this_machine_cannot_run_is_refused_before_any_work(tmp_path: Path) -> None:
    """A shipped GPU preset launched on a CPU-only machine: a ConfigError saying so; a plain process, a torchrun
    DDP run and a CPU copy of a preset pass."""
    gpu_ddp = {"WORLD_SIZE": "8", "ACCELERATE_USE_CPU": "False", "ACCELERATE_MIXED_PRECISION": "bf16"}
    with pytest.raises(ConfigError, match=r"sft: launched with a GPU accelerate config .* torch sees no GPU"):
        check_launch("sft", cuda=False, env=gpu_ddp)
    check_launch("sft", cuda=True, env=gpu_ddp)
    check_launch("sft", cuda=False, env={})
    check_launch("pretrain", cuda=False, env={"WORLD_SIZE": "2"})
    cpu_copy = {"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"}
    check_launch("dpo", cuda=False, env=cpu_copy)
    with pytest.raises(ConfigError, match="torch sees no GPU"):
        check_launch("sft", cuda=False, env={"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "bf16"})


def test_resolve_checks_the_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="dpo: launched with a GPU accelerate config"):
        resolve(stage="dpo", cuda=False)


def _preset_env(name: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file <preset>` gives a DeepSpeed process, fp32 on the CPU."""
    import yaml

    ds = yaml.safe_load((PRESETS / name).read_text(encoding="utf-8"))["deepspeed_config"]
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "no",
            "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(ds["zero_stage"]),
            "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": ds["offload_optimizer_device"],
            "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": ds["offload_param_device"],
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": str(ds["zero3_init_flag"]).lower(),
            "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": str(ds.get("zero3_save_16bit_model", False)).lower()}


@pytest.mark.parametrize("name", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_presets_pass_deepspeeds_own_parser(name: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """The shipped presets, as accelerate builds them into a DeepSpeed config, are accepted by DeepSpeed's parser;
    a config file DeepSpeed rejects is refused with DeepSpeed's message before training starts."""
    pytest.importorskip("deepspeed")
    for key, value in _preset_env(name).items():
        monkeypatch.setenv(key, value)
    check_launch("sft", cuda=False)
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                               "zero_optimization": {"stage": 7}}), encoding="utf-8")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(bad))
    with pytest.raises(ConfigError, match=r"(?s)sft: DeepSpeed rejects the launch's config: .*stage"):
        check_launch("sft", cuda=False)


def test_an_fsdp_launch_on_cpu_processes_runs_fsdp(monkeypatch: pytest.MonkeyPatch) -> None:
    """accelerate 1.15 leaves an FSDP launch on CPU processes as MULTI_CPU (replicated): `shard_on_cpu` switches the
    state to FSDP with the launch's FSDP2 plugin, and the process state too (later AcceleratorState()s copy it);
    anything else is left as it is."""
    from types import SimpleNamespace

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    from qihuang.placement import shard_on_cpu

    monkeypatch.setitem(PartialState._shared_state, "distributed_type", DistributedType.MULTI_CPU)
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, fsdp_plugin=None)
    assert not shard_on_cpu(ddp) and ddp.distributed_type == DistributedType.MULTI_CPU
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    gpu = SimpleNamespace(distributed_type=DistributedType.FSDP, fsdp_plugin="accelerate's own")
    assert not shard_on_cpu(gpu) and gpu.fsdp_plugin == "accelerate's own"
    assert shard_on_cpu(ddp) and ddp.distributed_type == DistributedType.FSDP
    assert ddp.fsdp_plugin.fsdp_version == 2
    assert PartialState._shared_state["distributed_type"] == DistributedType.FSDP
