"""DeepSpeed ZeRO-1/2/3 under the pretraining loop: the engine's config taken from the loop's settings, each
micro-batch's backward with its accumulation boundary, the optimizer step as the spike guard allows it, and (ZeRO-3)
the sharded weights gathered onto the main process at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from qihuang.training.settings import LoopSettings


def make_accelerator(device: str, mixed_precision: str) -> Any:
    """The loop's `Accelerator` on `device` ("cpu" or "cuda"). Under a DeepSpeed launch on the CPU, the processes'
    gloo group is set up first: accelerate alone finds no CUDA backend and would count one process while
    DeepSpeed's engine spans them all (and `cpu=True` would drop the engine altogether); an FSDP launch on the CPU
    runs FSDP (`placement.shard_on_cpu`)."""
    from accelerate import Accelerator, PartialState

    from qihuang.placement import launch_flag, shard_on_cpu

    deepspeed = launch_flag("ACCELERATE_USE_DEEPSPEED")
    if deepspeed and device == "cpu":
        PartialState(cpu=True)
    accelerator = Accelerator(cpu=device == "cpu" and not deepspeed, mixed_precision=mixed_precision)
    shard_on_cpu(accelerator.state)  # an FSDP launch on CPU processes: FSDP2 over gloo, not replicated
    return accelerator


def is_deepspeed(accelerator: Any) -> bool:
    """Whether `accelerate launch` put this process under DeepSpeed."""
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type == DistributedType.DEEPSPEED)


def zero_stage(accelerator: Any) -> int:
    """The ZeRO stage of this process's DeepSpeed config (0 without DeepSpeed)."""
    if not is_deepspeed(accelerator):
        return 0
    cfg = accelerator.state.deepspeed_plugin.deepspeed_config
    return int(cfg.get("zero_optimization", {}).get("stage", 0) or 0)


def whole(model: Any, accelerator: Any) -> Any:
    """A context in which a model that ZeRO-3 loaded sharded (zero.Init, before the engine exists) has its
    parameters whole on every process, as a forward needs them (every process must enter it); a no-op otherwise."""
    if zero_stage(accelerator) < 3 or not any(hasattr(p, "ds_id") for p in model.parameters()):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


@contextlib.contextmanager
def unsharded_loading() -> Iterator[None]:
    """Hugging Face models loaded inside are whole (not through zero.Init, which transformers uses while a ZeRO-3
    config is registered and which is a collective): for a model built on one process after training."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref  # no public getter; restored through the public setter
    registered = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if registered is not None:
            hf_deepspeed.set_hf_deepspeed_config(registered)


def configure(accelerator: Any, s: LoopSettings) -> dict[str, Any]:
    """Set the DeepSpeed config the engine will be built with from the loop's own settings (the loop packs its
    batches itself, so there is no DataLoader for accelerate to read them from): micro-batch, accumulation,
    clipping; under ZeRO-3 the weights are gathered at the end (`gathered_weights`). Returns the config."""
    cfg: dict[str, Any] = accelerator.state.deepspeed_plugin.deepspeed_config
    cfg["train_micro_batch_size_per_gpu"] = s.batch_size
    cfg["gradient_accumulation_steps"] = s.grad_accum
    cfg["train_batch_size"] = s.batch_size * s.grad_accum * accelerator.num_processes
    cfg["gradient_clipping"] = float(s.clip) if s.clip > 0 else 0.0  # DeepSpeed: 0 = no clipping
    if zero_stage(accelerator) >= 3:
        cfg.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    return cfg


def gathered_weights(accelerator: Any, engine: Any) -> dict[str, Any] | None:
    """ZeRO-3: the trained model's full state dict on the main process (every process must call this: it is a
    collective), keys as the wrapped model names them; None on the other processes and without ZeRO-3."""
    if zero_stage(accelerator) < 3:
        return None
    state = accelerator.get_state_dict(engine)
    return state if accelerator.is_main_process else None


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
