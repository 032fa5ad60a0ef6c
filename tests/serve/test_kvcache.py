"""The growing KV cache (`qihuang.serve.kvcache`): the same logits as transformers' concatenating `DynamicCache`
through prefill, decode steps past its spare room, a crop (rejected drafts), rows selected and rows replaced from
outside, while it copies the cache only when its room runs out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from qihuang.models import load_model

    return load_model(str(tiny_model_dir))[0].eval()


def _decode(model: Any, cache: Any, steps: int) -> tuple[list[Any], list[int]]:
    """Prefill 3 left-padded rows, decode `steps` tokens (the row's argmax fed back), crop the last 2 positions and
    decode again, keep rows 0 and 2, replace the cache tensors as `BatchDecoder._drop` does, decode once more. Returns
    every step's logits and, per step, whether layer 0's buffer was reallocated."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :5] = 0
    logits, moved = [], []

    def forward(inp: Any, mask: Any) -> Any:
        before = getattr(cache.layers[0], "_k", None)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -inp.shape[1]:]
        with torch.inference_mode():
            out = model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        moved.append(getattr(cache.layers[0], "_k", None) is not before)
        logits.append(out.logits[:, -1])
        return out.logits[:, -1].argmax(-1, keepdim=True)

    nxt = forward(ids, attn)
    for _ in range(steps):
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
        nxt = forward(nxt, attn)
    cache.crop(-2)
    attn = attn[:, :-2]
    attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
    nxt = forward(nxt, attn)
    keep = torch.tensor([0, 2])
    cache.batch_select_indices(keep)
    attn, nxt = attn[keep], nxt[keep]
    attn = torch.cat([attn, attn.new_ones((2, 1))], dim=1)
    nxt = forward(nxt, attn)
    for layer in cache.layers:  # as BatchDecoder._drop: new tensors put in from outside, a padding column trimmed
        layer.keys, layer.values = layer.keys[:, :, 1:].clone(), layer.values[:, :, 1:].clone()
    attn = torch.cat([attn[:, 1:], attn.new_ones((2, 1))], dim=1)
    forward(nxt, attn)
    return logits, moved


def test_same_logits_as_dynamic_cache_with_fewer_copies(model: Any) -> None:
    import torch
    from transformers import DynamicCache

    from qihuang.serve.kvcache import GrowingLayer, growing_cache

    theirs, _ = _decode(model, DynamicCache(config=model.config), 9)
    cache = growing_cache(model.config)
    assert cache.layers and all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    for layer in cache.layers:
        layer.spare = 4
    ours, moved = _decode(model, cache, 9)
    assert len(ours) == len(theirs) == 13
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # prefill (allocates 12 + 4), steps 1-4 in its room, 5 reallocates (17 + 4), 6-9 in room; the crop keeps the
    # buffer (a prefix view), the row selection and the outside replacement are new tensors: copied once each
    assert moved == [True, False, False, False, False, True, False, False, False, False, False, True, True]
    layer = cache.layers[0]
    assert layer.keys.data_ptr() == layer._k.data_ptr() and layer.keys.shape[-2] < layer._k.shape[-2]


def test_layers_it_cannot_grow_are_left_to_transformers(model: Any) -> None:
    """A config with sliding-window layers keeps transformers' own layers for them."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from qihuang.serve.kvcache import GrowingLayer, growing_cache

    config = model.config.__class__(**{**model.config.to_dict(), "sliding_window": 8,
                                       "layer_types": ["sliding_attention", "full_attention"]})
    kinds = [type(layer) for layer in growing_cache(config).layers]
    assert kinds[0] is DynamicSlidingWindowLayer and kinds[1] is GrowingLayer
