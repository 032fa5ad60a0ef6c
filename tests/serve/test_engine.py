"""Engine: greedy output identical to `model.generate` (the fast path is exact), streaming pieces, stop strings,
max tokens, seeded sampling, cancellation, UTF-8-safe detokenization and run-dir resolution."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qihuang.serve.engine import Engine, PromptTooLong, SamplingParams, resolve_model_dir
from qihuang.serve.textstream import Detokenizer, Drafter, StopMatcher, prompt_lookup_draft

MESSAGES = [{"role": "user", "content": "脉浮而缓者何也？脉浮而缓者，风在表也。"}]


@pytest.mark.parametrize("n", [1, 7, 40])
@pytest.mark.parametrize("guard", [False, True, "penalty"])
def test_greedy_matches_model_generate(engine: Engine, n: int, guard: bool | str) -> None:
    """The fast path equals `model.generate` with the same repetition control (`qihuang.decoding`'s processor)."""
    import torch

    from qihuang.decoding import OFF, DecodeParams, logits_processor

    decode = {False: OFF, True: DecodeParams(), "penalty": DecodeParams(1.3, 3)}[guard]
    ids = engine.prompts.encode(engine.prompts.render(MESSAGES))
    procs = [logits_processor(len(ids), decode)] if decode.active else []
    out = engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=n, do_sample=False, logits_processor=procs)[0][len(ids):].tolist()
    ref_ids = out[: next((i for i, t in enumerate(out) if t in engine.eos_ids), len(out))]
    params = SamplingParams(max_new_tokens=n, repetition_penalty=decode.repetition_penalty,
                            no_repeat_ngram_size=decode.no_repeat_ngram_size)
    got = list(engine._token_stream(ids, params, lambda: False))
    assert got == ref_ids
    text = "".join(c.text for c in engine.generate(MESSAGES, params))
    assert text == engine.tokenizer.decode(ref_ids, skip_special_tokens=True)


def test_default_decoding_never_repeats_an_ngram(engine: Engine) -> None:
    from qihuang.decoding import DecodeParams

    n = DecodeParams().no_repeat_ngram_size
    ids = engine.prompts.encode(engine.prompts.render([{"role": "user", "content": "一一一一一一一一一一一一"}]))
    got = list(engine._token_stream(ids, SamplingParams(max_new_tokens=60), lambda: False))
    grams = [tuple(got[i:i + n]) for i in range(len(got) - n + 1)]
    assert len(grams) == len(set(grams))


def test_lookup_path_equals_plain_greedy(engine: Engine) -> None:
    prompt = engine.prompts.render([{"role": "user", "content": "一二三四五六七八九十，一二三四五六七八九十，一二三"}])
    with_lookup = list(engine.generate(prompt=prompt, params=SamplingParams(max_new_tokens=48)))
    engine.lookup_draft, saved = 0, engine.lookup_draft
    try:
        plain = list(engine.generate(prompt=prompt, params=SamplingParams(max_new_tokens=48)))
    finally:
        engine.lookup_draft = saved
    assert "".join(c.text for c in with_lookup) == "".join(c.text for c in plain)
    assert with_lookup[-1].completion_tokens == plain[-1].completion_tokens == 48
    assert with_lookup[-1].finish_reason == "length"


def test_incremental_repetition_state_equals_a_rescan() -> None:
    """`Repetition` (updated per token, drafts pushed and popped) bans what a scan of all generated tokens bans."""
    import random

    import torch

    from qihuang.decoding import DecodeParams, Repetition

    def scan(generated: list[int], n: int) -> list[int]:
        tail = generated[len(generated) - n + 1:]
        return sorted({generated[i + n - 1] for i in range(len(generated) - n + 1) if generated[i:i + n - 1] == tail})

    rnd = random.Random(0)
    for n, penalty in ((2, 1.0), (3, 1.2), (4, 1.0), (0, 1.5)):
        rep, seq = Repetition(DecodeParams(penalty, n)), []
        for _ in range(300):
            if n:
                assert rep.banned() == scan(seq, n)
            logits = torch.randn(8)
            same = rep.apply(logits)
            assert (same is logits) == (penalty == 1.0 and not rep.banned()) or not seq
            draft = [rnd.randrange(8) for _ in range(3)]
            for t in draft:
                rep.push(t)
            for _ in draft:
                rep.pop()
            assert rep.tokens == seq and torch.equal(rep.apply(logits), same)
            seq.append(rnd.randrange(8))
            rep.push(seq[-1])


def test_lookup_draft() -> None:
    assert prompt_lookup_draft([1, 2, 3, 4, 9, 2, 3], 3, 2) == [4, 9]
    assert prompt_lookup_draft([5, 6, 7], 3, 4) == []
    assert prompt_lookup_draft([1, 1, 1], 2, 3) == [1]


def test_drafts_grow_when_confirmed_shrink_when_cut_and_pause_when_rejected() -> None:
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]  # "1 2" seen before: the draft continues 3 4 5 …
    d = Drafter(max_draft=6, max_ngram=3, size=2)
    assert d.propose(ids, room=10) == [3, 4]
    d.record(2, 2)  # confirmed whole: 2 longer
    assert d.propose(ids, room=10) == [3, 4, 5, 6]
    assert d.propose(ids, room=3) == [3, 4, 5]  # never past the tokens left
    d.record(4, 1)  # cut short: what was confirmed plus one
    assert d.size == 2
    for pause in (1, 2, 4, 8, 16, 16):  # rejected at the first token again and again: pauses double, up to 16
        d.record(d.size, 0)
        assert [d.propose(ids, 10) for _ in range(pause)] == [[]] * pause
        assert d.propose(ids, 10) == [3]
    d.record(1, 1)  # one confirmed: drafting goes on at once
    assert d.pause == 0 and d.propose(ids, 10) == [3, 4, 5]
    assert d.size == 3  # confirmed whole: 2 longer again


def test_stream_pieces_and_usage(engine: Engine) -> None:
    chunks = list(engine.generate(MESSAGES, SamplingParams(max_new_tokens=12)))
    assert chunks[-1].finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].prompt_tokens == len(engine.prompts.encode(engine.prompts.render(MESSAGES)))
    assert "".join(engine.stream(MESSAGES, max_new_tokens=12)) == "".join(c.text for c in chunks)


def test_sampling_seeded_and_bounded(engine: Engine) -> None:
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    a = "".join(c.text for c in engine.generate(MESSAGES, p))
    b = "".join(c.text for c in engine.generate(MESSAGES, p))
    assert a == b
    other = {"".join(c.text for c in engine.generate(MESSAGES, SamplingParams(max_new_tokens=10, temperature=1.5,
                                                                               seed=s))) for s in range(4)}
    assert len(other) > 1


def test_cancel_stops_generation(engine: Engine) -> None:
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    chunks = list(engine.generate(MESSAGES, SamplingParams(max_new_tokens=200), cancelled=cancelled))
    assert chunks[-1].finish_reason == "cancelled" and chunks[-1].completion_tokens <= 3


def test_prompt_too_long(engine: Engine) -> None:
    with pytest.raises(PromptTooLong):
        list(engine.generate([{"role": "user", "content": "脉" * 3000}], SamplingParams(max_new_tokens=8)))


def test_stop_matcher_holds_back_prefixes() -> None:
    m = StopMatcher(["END", "。。"])
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("N") == ("", False)
    assert m.feed("x。") == ("ENx", False)
    assert m.feed("。tail") == ("", True)
    m2 = StopMatcher([])
    assert m2.feed("E") == ("E", False)


def test_detokenizer_is_utf8_safe(engine: Engine) -> None:
    text = "黄连味苦寒，主热气目痛。𠀀字"
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    det = Detokenizer(engine.tokenizer)
    pieces = [det.push(i) for i in ids] + [det.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    cut = engine.tokenizer("黄连𠀀", add_special_tokens=False)["input_ids"]
    head = engine.tokenizer("黄连", add_special_tokens=False)["input_ids"]
    assert cut[: len(head)] == head and len(cut) - len(head) >= 2  # 𠀀 spans several byte tokens
    det = Detokenizer(engine.tokenizer)  # a length cut in the middle of 𠀀: its bytes are dropped, not shown as U+FFFD
    assert "".join([det.push(i) for i in cut[:-1]] + [det.flush()]) == "黄连"


def test_resolve_run_dir(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "demo"
    for stage in ("pretrain", "sft"):
        shutil.copytree(tiny_model_dir, run / stage / "model")
    (run / "dpo").mkdir()  # unfinished stage without a model: skipped
    (run / "sft" / "model" / "qihuang_template.json").write_text('{"system_prompt": "你是岐黄古籍助手。"}',
                                                                  encoding="utf-8")
    assert resolve_model_dir(run) == run / "sft" / "model"
    assert resolve_model_dir(tiny_model_dir) == tiny_model_dir
    eng = Engine.load(run)
    last = list(eng.generate(MESSAGES, SamplingParams(max_new_tokens=3)))[-1]
    assert eng.name == "demo-sft" and 1 <= last.completion_tokens <= 3 and last.finish_reason in ("stop", "length")
    assert "你是岐黄古籍助手。" in eng.prompts.render(MESSAGES)  # the trained default system prompt (template #6)
    assert "你是岐黄古籍助手。" not in eng.prompts.render([{"role": "system", "content": "另"}, *MESSAGES])
    from qihuang.models import ModelError

    with pytest.raises(ModelError):
        resolve_model_dir(tmp_path / "demo" / "dpo")


def test_base_plus_lora_adapter_dir(tmp_path: Path, tiny_model_dir: Path) -> None:
    """An adapter directory (peft) is loaded onto its base and merged; output equals the merged model's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from qihuang.models import load_model

    base, tok = load_model(tiny_model_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 1.0)  # a strong adapter: its effect on the output must show
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    merged = Engine(peft_model.merge_and_unload(), tok, name="merged")
    eng = Engine.load(adapter)
    plain = Engine.load(tiny_model_dir)
    want = merged.complete(MESSAGES, max_new_tokens=12, temperature=1.0, seed=5)
    assert eng.complete(MESSAGES, max_new_tokens=12, temperature=1.0, seed=5) == want
    assert plain.complete(MESSAGES, max_new_tokens=12, temperature=1.0, seed=5) != want  # the adapter matters
