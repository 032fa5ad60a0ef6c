"""torch FSDP2 under the pretraining loop (`accelerate launch` with an FSDP config, on GPUs or on CPU processes):
the root's own parameters gathered around an evaluation, and the sharded weights gathered onto the main process at
the end."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def is_sharded(module: Any) -> bool:
    """Whether FSDP2's `fully_shard` sharded `module` (its parameters are DTensors, gathered per forward)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def unsharded_class(module: Any) -> type:
    """The class `module` was built as: `fully_shard` swaps it for a subclass of `FSDPModule` and it."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


@contextlib.contextmanager
def whole_root(root: Any) -> Iterator[None]:
    """A context in which the sharded `root`'s own parameters (embeddings, final norm, head: those no decoder layer
    holds) are whole, as a forward of the model inside it needs them (the root's forward would gather them; the
    decoder layers gather their own). Every process must enter it (a collective); a no-op without FSDP."""
    if not is_sharded(root):
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def gathered_weights(root: Any, main: bool) -> dict[str, Any] | None:
    """The sharded `root`'s full state dict on the main process, on the CPU (every process must call this: it is a
    collective), keys as `root` names them; None on the other processes and without FSDP."""
    if not is_sharded(root):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if main else None
