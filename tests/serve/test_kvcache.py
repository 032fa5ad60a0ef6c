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


def test_common_prefix_leaves_every_prompt_a_token_of_its_own() -> None:
    from qihuang.serve.kvcache import common_prefix

    opening = list(range(100, 120))
    assert common_prefix([opening + [1, 2], opening + [1, 3], opening + [4]]) == opening
    assert common_prefix([opening + [1], opening + [1]]) == opening  # identical prompts: the last token is their own
    assert common_prefix([opening, opening + [5]]) == opening[:-1]
    assert common_prefix([opening + [1]]) == []  # one prompt: nothing shared
    assert common_prefix([opening[:10] + [1], opening[:10] + [2]]) == []  # shorter than MIN_SHARED_TOKENS
    assert common_prefix([[7] + opening, opening]) == []


def test_left_align_moves_the_padding_before_the_shared_opening() -> None:
    """[opening][padding][own] → [padding][opening][own], keys and values alike, per row."""
    import torch
    from transformers import DynamicCache

    from qihuang.serve.kvcache import left_align

    cache = DynamicCache()
    cols = torch.arange(6, dtype=torch.float)  # 2 shared + width 4: row 0 owns 4 tokens, row 1 owns 1
    keys = cols.view(1, 1, 6, 1).expand(2, 2, 6, 3).clone()
    cache.update(keys, keys + 100, 0)
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 1]])
    out = left_align(cache, attn, 2)
    assert out.tolist() == [[1] * 6, [0, 0, 0, 1, 1, 1]]
    assert cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert cache.layers[0].keys[1, 1, :, 2].tolist() == [2, 3, 4, 0, 1, 5]
    assert cache.layers[0].values[1, 0, :, 0].tolist() == [102, 103, 104, 100, 101, 105]
