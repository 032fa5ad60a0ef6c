"""What the SFT and DPO stages need to train as one under `accelerate launch` (DDP, FSDP, DeepSpeed): the model
wrapped for training after an evaluation, decisions taken once for all processes (resume point, time budget), and
the model found inside its wrapper. In a single process every helper is the identity."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

from qihuang.training.fsdp import is_sharded

T = TypeVar("T")


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def from_main(value: T) -> T:
    """The main process's `value` on every process (a picklable object: a checkpoint path, a decision)."""
    if _world() == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def agree(over: bool, fitted: int | None) -> tuple[bool, int | None]:
    """(any process over its time budget, the fewest steps any process's budget allows): what every process of a
    time-budgeted run follows, so that they stop at the same step on the same LR schedule. `fitted` must be None on
    all processes or on none."""
    if _world() == 1:
        return over, fitted
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather

    mine = torch.tensor([[float(over), float(fitted if fitted is not None else 0)]], dtype=torch.float64,
                        device=PartialState().device)
    every = gather(mine).reshape(-1, 2)
    return bool(every[:, 0].max() > 0), (int(every[:, 1].min()) if fitted is not None else None)


def shard_on_cpu(trainer: Any) -> None:
    """Have `trainer` run the FSDP that `accelerate launch` asked for on CPU processes too
    (`placement.shard_on_cpu`); its save path then gathers the sharded model (`outputs.unsharded`)."""
    from qihuang.placement import shard_on_cpu as shard_state

    if shard_state(trainer.accelerator.state):
        trainer.is_fsdp_enabled = True


def sharding(trainer: Any) -> str:
    """How training spread the model over the processes, for the stage's summary: "fsdp" (FSDP2 sharded it),
    "deepspeed-zeroN" (DeepSpeed's engine, ZeRO stage N), "ddp" (a whole copy in each process) or "none"."""
    if is_sharded(trainer.model_wrapped):
        return "fsdp"
    if trainer.is_deepspeed_enabled and trainer.deepspeed is not None:
        return f"deepspeed-zero{trainer.deepspeed.zero_optimization_stage()}"
    return "ddp" if trainer.accelerator.num_processes > 1 else "none"


def wrap_after_evaluate(trainer: Any) -> None:
    """Let `trainer.train()` wrap the model (DDP, FSDP) after a `trainer.evaluate()`. The evaluation has accelerate
    prepare the model for evaluation (no wrapper) and mark it prepared, and the training's prepare then hands it back
    unwrapped (accelerate 1.15, transformers 5.24): the processes' gradients were never averaged, each process
    trained its own copy on its own shard of the data and the main one saved its copy. Under DeepSpeed the evaluation
    builds an inference engine that training would keep, with no optimizer for `accelerator.backward` to step
    (`'NoneType' object has no attribute 'backward'`): it is dropped so that training builds its own. One process has
    nothing to wrap; a model FSDP already sharded stays as it is."""
    model = trainer.model
    if trainer.accelerator.num_processes == 1 or is_sharded(model):
        return
    if trainer.is_deepspeed_enabled:
        if trainer.model_wrapped is model and not getattr(model, "_is_accelerate_prepared", False):
            return
        trainer.model_wrapped, trainer.deepspeed, trainer.accelerator.deepspeed_engine_wrapped = model, None, None
    elif trainer.model_wrapped is not model or not getattr(model, "_is_accelerate_prepared", False):
        return
    model._is_accelerate_prepared = False  # accelerate's prepare then wraps it for training
    trainer.accelerator._models = [m for m in trainer.accelerator._models if getattr(m, "module", m) is not model]


@contextlib.contextmanager
def evaluable(trainer: Any) -> Iterator[None]:
    """Let `trainer.evaluate()` run before training where transformers cannot: under DeepSpeed ZeRO-1/2 it refuses
    ("ZeRO inference only makes sense with ZeRO Stage 3"), under FSDP2 accelerate refuses to shard a model without
    its optimizer ("a model and optimizer must be passed together"). Every process holds the whole model there until
    training shards it, so the evaluation runs as under DDP (accelerate prepares the model for evaluation only;
    `wrap_after_evaluate` undoes that before training). Nothing changes elsewhere (ZeRO-3 evaluates through its
    inference engine, a sharded FSDP model as it is, DDP as it does)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero = trainer.is_deepspeed_enabled and trainer.deepspeed is None and not is_deepspeed_zero3_enabled()
    fsdp = trainer.is_fsdp_enabled and not is_sharded(trainer.model)
    if zero:
        trainer.is_deepspeed_enabled = False
    if fsdp:
        trainer.is_fsdp_enabled = False
    try:
        yield
    finally:
        if zero:
            trainer.is_deepspeed_enabled = True
        if fsdp:
            trainer.is_fsdp_enabled = True


def shards_parameters() -> bool:
    """Whether this launch shards the parameters themselves across the processes (DeepSpeed ZeRO-3, or FSDP over
    several processes): a forward pass then gathers each layer from all of them, and a save gathers the weights."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from qihuang.placement import launch_flag

    return is_deepspeed_zero3_enabled() or (launch_flag("ACCELERATE_USE_FSDP") and _world() > 1)


def every_process_forwards() -> bool:
    """Whether a forward pass outside the trainer (held-out answers, preference scores) must run on every process:
    when the parameters are sharded (`shards_parameters`) one process alone would wait forever for the others'
    shards; otherwise the main process runs it for the summary and the others skip it."""
    from qihuang.runs import is_main_process

    return is_main_process() or shards_parameters()


def inner(model: Any) -> Any:
    """The model inside a DistributedDataParallel wrapper (the model itself when not wrapped)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def total(count: int) -> int:
    """`count` summed over the processes (tokens each one trained on)."""
    if _world() == 1:
        return count
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather

    return int(gather(torch.tensor([count], dtype=torch.int64, device=PartialState().device)).sum())


def mode_warning(trainer: Any) -> str | None:
    """Why the trainer does not run the sharding that `accelerate launch` was asked for (None when it does;
    `placement.sharding_not_run`)."""
    from qihuang.placement import sharding_not_run

    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return None
    return sharding_not_run(trainer.accelerator.distributed_type.value, "the trainer")


def warn_mode(trainer: Any, metrics: Any) -> None:
    """Log `mode_warning` (if any) to the stage's metrics from the main process, and as a Python warning."""
    import warnings

    message = mode_warning(trainer)
    if message and trainer.is_world_process_zero():
        warnings.warn(message, stacklevel=2)
        metrics.log(event="warning", message=message)
