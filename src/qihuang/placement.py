"""Where a training stage runs and in what precision — one choice for pretrain, SFT and DPO: CUDA when a GPU is
visible, with bf16 (fp16 on GPUs without it); the CPU in fp32 otherwise (bf16 on these CPUs is ~20x slower).
Recipes override it with each stage's `device` and `precision` fields."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qihuang.config import ConfigError

Device = Literal["auto", "cpu", "cuda"]
"""A stage's `device` field: auto = CUDA when a GPU is visible, else the CPU."""
Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""A stage's `precision` field: auto = bf16 on a GPU that has it (else fp16), fp32 on the CPU."""


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision."""

    device: Literal["cpu", "cuda"]
    """Where the stage trains."""
    precision: Literal["fp32", "bf16", "fp16"]
    """Mixed-precision mode (autocast) of the training step; fp32: none."""

    def trainer_args(self) -> dict[str, Any]:
        """`transformers.TrainingArguments` keywords: device, mixed precision, and on CUDA the largest micro-batch
        that fits found by halving on out-of-memory (`auto_find_batch_size`) instead of dying mid-run."""
        return {"use_cpu": self.device == "cpu", "bf16": self.precision == "bf16", "fp16": self.precision == "fp16",
                "auto_find_batch_size": self.device == "cuda"}

    def load_dtype(self, method: str) -> str:
        """Torch dtype name to load the start model in: a LoRA base on CUDA in the half precision itself (its
        weights are frozen; peft keeps the adapter in fp32), everything else in fp32 (autocast computes in half)."""
        if method == "lora" and self.device == "cuda" and self.precision != "fp32":
            return "bfloat16" if self.precision == "bf16" else "float16"
        return "float32"

    def place(self, model: Any) -> Any:
        """`model` on this device for what runs before the trainer takes it (probes, reference scores): on CUDA in
        a single process only — under `accelerate launch` the trainer places (or shards) it."""
        if self.device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return model.to("cuda")
        return model

    @property
    def accelerate_mixed_precision(self) -> str:
        """`accelerate.Accelerator(mixed_precision=...)`."""
        return "no" if self.precision == "fp32" else self.precision


def resolve(device: str = "auto", precision: str = "auto", stage: str = "train",
            cuda: bool | None = None, bf16_supported: bool | None = None) -> Placement:
    """The placement a stage's `device`/`precision` fields mean on this machine (`cuda`, `bf16_supported`: what
    torch reports, unless given). A CUDA request without a visible GPU, or fp16 on the CPU, is a ConfigError, as is
    an `accelerate launch` this machine cannot run (`check_launch`)."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    check_launch(stage, cuda)
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{stage}.device: must be auto, cpu or cuda, got {device!r}")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"{stage}.precision: must be auto, fp32, bf16 or fp16, got {precision!r}")
    where: Literal["cpu", "cuda"] = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    if where == "cuda" and not cuda:
        raise ConfigError(f"{stage}.device: cuda asked for, but torch sees no GPU (use auto or cpu)")
    if precision == "auto":
        if where == "cpu":
            return Placement("cpu", "fp32")
        if bf16_supported is None:
            bf16_supported = bool(torch.cuda.is_bf16_supported())
        return Placement("cuda", "bf16" if bf16_supported else "fp16")
    if where == "cpu" and precision == "fp16":
        raise ConfigError(f"{stage}.precision: fp16 needs a GPU (use fp32, or bf16 — slow on most CPUs)")
    return Placement(where, precision)  # type: ignore[arg-type]


_AUTO_FILL = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}


def launch_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether `accelerate launch` set the boolean variable `name` (ACCELERATE_USE_DEEPSPEED, ACCELERATE_USE_FSDP …)."""
    env = os.environ if env is None else env
    return env.get(name, "false").strip().lower() in ("1", "true", "yes")


def shard_on_cpu(state: Any) -> bool:
    """Run the FSDP that `accelerate launch` asked for on CPU processes too; whether `state` (the AcceleratorState)
    was switched to it. accelerate 1.15 selects FSDP only on an accelerator and would train an FSDP launch on the CPU
    as plain DDP (MULTI_CPU, a whole copy in every process), though torch's FSDP2 (`fully_shard`) runs there over
    gloo: the state takes FSDP with the launch's plugin (`FullyShardedDataParallelPlugin` reads its FSDP_*
    variables), so that `prepare` shards the model as on GPUs."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if state.distributed_type != DistributedType.MULTI_CPU or not launch_flag("ACCELERATE_USE_FSDP"):
        return False
    state.distributed_type = DistributedType.FSDP
    # as accelerate records FSDP on GPUs: every later AcceleratorState() copies the process state's type
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    return True


def sharding_not_run(runs: str, who: str) -> str | None:
    """Why `who` does not shard as `accelerate launch` asked (None when it does): `runs` is the distributed type it
    got (MULTI_CPU or MULTI_GPU: a whole copy in every process, as accelerate would run an FSDP launch on the CPU
    without `shard_on_cpu`)."""
    asked = [name for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if launch_flag(env)]
    if not asked or runs in ("FSDP", "DEEPSPEED"):
        return None
    return f"accelerate launch asked for {asked[0]} but {who} runs {runs} (replicated model, no sharding)"


def check_launch(stage: str, cuda: bool | None = None, env: Mapping[str, str] | None = None) -> None:
    """Refuse, before any work, an `accelerate launch` that cannot run here as asked (a ConfigError naming why):
    a GPU config — `use_cpu: false`, or bf16/fp16 mixed precision, under DDP, FSDP or DeepSpeed — where torch
    sees no GPU; a DeepSpeed config that DeepSpeed's own parser rejects (its message). A plain single process
    passes untouched."""
    env = os.environ if env is None else env
    deepspeed, fsdp = launch_flag("ACCELERATE_USE_DEEPSPEED", env), launch_flag("ACCELERATE_USE_FSDP", env)
    if not (deepspeed or fsdp or int(env.get("WORLD_SIZE", "1") or 1) > 1):
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    mixed = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if not cuda and (env.get("ACCELERATE_USE_CPU", "").strip().lower() == "false" or mixed in ("bf16", "fp16")):
        raise ConfigError(f"{stage}: launched with a GPU accelerate config (use_cpu: false / mixed_precision: "
                          f"{mixed}) but torch sees no GPU; for CPU processes use a copy with use_cpu: true and "
                          "mixed_precision: no")
    if deepspeed:
        check_deepspeed_config(stage)


def check_deepspeed_config(stage: str) -> None:
    """Build the DeepSpeed config this launch will train with (accelerate's `DeepSpeedPlugin` from the launch's
    environment, "auto" values filled as the trainer would) and have DeepSpeed's own parser check it."""
    try:
        from accelerate.utils import DeepSpeedPlugin
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError as e:
        raise ConfigError(f"{stage}: DeepSpeed asked for but not installed ({e}); pip install deepspeed") from e

    def fill(d: dict[str, Any]) -> dict[str, Any]:
        return {k: fill(v) if isinstance(v, dict) else (_AUTO_FILL.get(k, 1) if v == "auto" else v)
                for k, v in d.items() if not (k == "train_batch_size" and v == "auto")}

    try:
        DeepSpeedConfig(fill(DeepSpeedPlugin().deepspeed_config))
    except Exception as e:  # DeepSpeed raises pydantic ValidationError, AssertionError, ValueError …
        raise ConfigError(f"{stage}: DeepSpeed rejects the launch's config: {e}") from e
