"""The KV cache decoding appends to: transformers' `DynamicCache` whose full-attention layers write each step's keys
and values into spare room instead of concatenating (a concatenation copies the whole cache every step); and the
keys and values of a prompt opening that many prompts share, computed once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


MIN_SHARED_TOKENS = 16
"""Shortest common prompt opening worth computing once (`common_prefix`)."""


@dataclass
class SharedPrefix:
    """Tokens a batch's prompts open with and their keys/values per layer ([1, kv heads, len(ids), head dim],
    positions 0..len(ids)-1), computed once and copied into each prompt's cache rows."""

    ids: list[int]
    layers: list[tuple[Any, Any]]

    def opens(self, prompt_ids: Sequence[int]) -> bool:
        """Whether `prompt_ids` opens with these tokens and has at least one token of its own after them."""
        n = len(self.ids)
        return len(prompt_ids) > n and list(prompt_ids[:n]) == self.ids


def common_prefix(prompts: Sequence[Sequence[int]], min_tokens: int = MIN_SHARED_TOKENS) -> list[int]:
    """The longest token opening of every prompt that leaves each at least one token of its own; [] when it is
    shorter than `min_tokens` or there are fewer than two prompts."""
    if len(prompts) < 2:
        return []
    first = list(prompts[0])
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return first[:n] if n >= min_tokens else []


def prefix_cache(config: Any, prefix: SharedPrefix | None, rows: int) -> DynamicCache:
    """A `growing_cache` whose rows all hold `prefix`'s keys and values (empty without a prefix)."""
    cache = growing_cache(config)
    if prefix is not None:
        for layer, (k, v) in zip(cache.layers, prefix.layers, strict=True):
            layer.lazy_initialization(k, v)
            replace(layer, k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous())
    return cache


def left_align(cache: DynamicCache, attn: Any, shared: int) -> Any:
    """Rows laid out [shared opening][left padding][own tokens] (a prefill after `prefix_cache`) rearranged to
    [left padding][shared opening][own tokens], the layout of a plain left-padded prefill; returns the new
    attention mask [rows, width] (1 = real token). Keys carry their positions (rotary), so moving columns keeps
    what each token attends to."""
    import torch

    rows, width = attn.shape
    pads = (attn[:, shared:] == 0).sum(dim=1).tolist()
    order = torch.stack([torch.cat([torch.arange(shared, shared + p), torch.arange(shared),
                                    torch.arange(shared + p, width)]) for p in pads]).to(attn.device)
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        replace(layer, k.gather(2, order[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])),
                v.gather(2, order[:, None, :, None].expand(-1, v.shape[1], -1, v.shape[3])))
    return attn.gather(1, order)
