"""The KV cache decoding appends to: transformers' `DynamicCache` whose full-attention layers write each step's keys
and values into spare room instead of concatenating (a concatenation copies the whole cache every step)."""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer

SPARE_TOKENS = 64
"""Positions a layer's buffer grows by beyond what it holds: the cache is copied once every this many decode steps
instead of at every step. Decoding 16 rows after 650-token prompts (SmolLM2-135M, fp32, 2 cores): 128–149 ms a step
instead of 195–207, the same logits to the bit (benchmarks/RESULTS.md, session 16)."""


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` over preallocated buffers: `keys`/`values` are views of the first positions of
    [batch, heads, capacity, head_dim] buffers, and `update` writes the new positions into the room after them.
    Whatever replaces `keys`/`values` from outside (a batch joined or trimmed, `crop`, `batch_select_indices`) is
    either still a prefix view of the buffers (kept) or a tensor of its own (copied into new buffers at the next
    update)."""

    def __init__(self, spare: int = SPARE_TOKENS) -> None:
        super().__init__()
        self.spare = spare
        self._k: Any = None
        self._v: Any = None

    def _holds(self, length: int) -> bool:
        """Whether `keys` is the first `length` positions of the buffers (so new positions go right after)."""
        k = self._k
        return (k is not None and length > 0 and self.keys.data_ptr() == k.data_ptr()
                and self.keys.shape[:2] == k.shape[:2] and self.keys.stride() == k.stride())

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        m = n + key_states.shape[-2]
        if not self._holds(n) or m > self._k.shape[-2]:
            self._k = self._v = None  # a buffer no longer viewed is freed before the new one is allocated
            b, h, _, d = key_states.shape
            k = key_states.new_empty((b, h, m + self.spare, d))
            v = value_states.new_empty((b, h, m + self.spare, value_states.shape[-1]))
            if n:
                k[:, :, :n] = self.keys
                v[:, :, :n] = self.values
            self._k, self._v = k, v
        self._k[:, :, n:m] = key_states
        self._v[:, :, n:m] = value_states
        self.keys, self.values = self._k[:, :, :m], self._v[:, :, :m]
        return self.keys, self.values

    def reset(self) -> None:
        self._k = self._v = None
        super().reset()


def replace(layer: Any, keys: Any, values: Any) -> None:
    """Put new key/value tensors into a cache layer (rows joined or dropped): a `GrowingLayer` lets go of its
    buffers at once, so they are not held next to their replacement until the next update."""
    layer.keys, layer.values = keys, values
    if isinstance(layer, GrowingLayer):
        layer._k = layer._v = None


def growing_cache(config: Any) -> DynamicCache:
    """`DynamicCache(config=config)` with each plain full-attention layer a `GrowingLayer` (sliding-window and other
    layers as transformers makes them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
