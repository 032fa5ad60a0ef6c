"""DeepSpeed ZeRO-1/2 under the pretraining loop: the engine's config taken from the loop's settings, each
micro-batch's backward with its accumulation boundary, and the optimizer step as the spike guard allows it."""

from __future__ import annotations

from typing import Any

from qihuang.config import ConfigError
from qihuang.training.settings import LoopSettings


def make_accelerator(device: str, mixed_precision: str) -> Any:
    """The loop's `Accelerator` on `device` ("cpu" or "cuda"). Under a DeepSpeed launch on the CPU, the processes'
    gloo group is set up first: accelerate alone finds no CUDA backend and would count one process while
    DeepSpeed's engine spans them all (and `cpu=True` would drop the engine altogether)."""
    from accelerate import Accelerator, PartialState

    from qihuang.placement import launch_flag

    deepspeed = launch_flag("ACCELERATE_USE_DEEPSPEED")
    if deepspeed and device == "cpu":
        PartialState(cpu=True)
    return Accelerator(cpu=device == "cpu" and not deepspeed, mixed_precision=mixed_precision)


def is_deepspeed(accelerator: Any) -> bool:
    """Whether `accelerate launch` put this process under DeepSpeed."""
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type == DistributedType.DEEPSPEED)


def configure(accelerator: Any, s: LoopSettings) -> dict[str, Any]:
    """Set the DeepSpeed config the engine will be built with from the loop's own settings (the loop packs its
    batches itself, so there is no DataLoader for accelerate to read them from): micro-batch, accumulation,
    clipping. ZeRO-3 is refused: the loop evaluates and saves the model on the main process alone, which sharded
    parameters would turn into a collective that the other processes never join. Returns the config."""
    cfg: dict[str, Any] = accelerator.state.deepspeed_plugin.deepspeed_config
    stage = int(cfg.get("zero_optimization", {}).get("stage", 0) or 0)
    if stage >= 3:
        raise ConfigError("pretrain: DeepSpeed ZeRO-3 is not supported by the pretraining loop (parameters sharded "
                          "across processes); launch pretrain with deepspeed_zero2.yaml (optimizer state and "
                          "gradients sharded), ddp.yaml or fsdp.yaml — sft and dpo run under ZeRO-3")
    cfg["train_micro_batch_size_per_gpu"] = s.batch_size
    cfg["gradient_accumulation_steps"] = s.grad_accum
    cfg["train_batch_size"] = s.batch_size * s.grad_accum * accelerator.num_processes
    cfg["gradient_clipping"] = float(s.clip) if s.clip > 0 else 0.0  # DeepSpeed: 0 = no clipping
    return cfg


def backward(engine: Any, loss: Any, last: bool) -> None:
    """One micro-batch's backward through the engine; `last`: the step's final micro-batch (gradients reduced).
    The loss is already divided by the step's target tokens, so DeepSpeed must not divide it by the accumulation
    steps again."""
    engine.set_gradient_accumulation_boundary(is_boundary=last)
    engine.backward(loss, scale_wrt_gas=False)


def step(engine: Any, opt: Any, apply: bool) -> float | None:
    """The engine's optimizer step (it clips to `gradient_clipping` first and zeroes the gradients after); the
    gradient norm before clipping. A step the guard rejects is taken at LR 0: DeepSpeed owns the reduced
    gradients, so the weights stay as they were but AdamW's moments see that gradient."""
    if not apply:
        for g in opt.param_groups:
            g["lr"] = 0.0
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else None
