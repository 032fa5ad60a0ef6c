"""MCQ scoring: prefix-shared batched log-likelihoods equal the naive per-option loop; set-level summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qihuang.config import ConfigError
from qihuang.evaluate import EvalConfig
from qihuang.evaluate.mcq import (encode_shared, evaluate_mcq_set, pick, score_options_batch,
                                  score_options_naive)
from qihuang.evaluate.mcq_formats import answer_text, build_prompt, format_question, load_mcq, shared_text

from .conftest import BAD_CSV, GOOD_CMMLU, write_text


def test_shared_batched_equals_naive(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny
    items = load_mcq(write_text(tmp_path / "bad.csv", BAD_CSV)).items + \
        load_mcq(write_text(tmp_path / "good.csv", GOOD_CMMLU)).items
    # prompts of different lengths (left padding) and options of 1..n tokens (right padding)
    items[0].options["C"] = "三"
    prompts = [build_prompt(it) for it in items]
    conts = [[answer_text(it, k) for k in it.options] for it in items]
    batched = score_options_batch(model, tok, prompts, conts)
    for p, c, got in zip(prompts, conts, batched):
        ref = score_options_naive(model, tok, p, c)
        assert got.ll == pytest.approx(ref.ll, abs=1e-3)
        assert got.letter == pytest.approx(ref.letter, abs=1e-3)
        assert got.tokens == ref.tokens and got.chars == [len(x) for x in c]
    single = score_options_batch(model, tok, prompts[:1], conts[:1])[0]
    assert single.ll == pytest.approx(batched[0].ll, abs=1e-3)


def test_cached_shared_prefix_equals_naive(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """Header + few-shot examples run once and their KV cache reused by every batch: same log-likelihoods."""
    model, tok = tiny
    shots = load_mcq(write_text(tmp_path / "dev.csv", GOOD_CMMLU)).items[:2]
    items = load_mcq(write_text(tmp_path / "bad.csv", BAD_CSV)).items
    text = shared_text(shots)
    shared = encode_shared(model, tok, text)
    assert shared is not None and len(shared.ids) > 20
    own = [format_question(it) for it in items]
    conts = [[answer_text(it, k) for k in it.options] for it in items]
    for _ in range(2):  # the shared cache must survive being used
        got = score_options_batch(model, tok, own, conts, shared)
        for o, c, g in zip(own, conts, got):
            ref = score_options_naive(model, tok, o, c, shared_text=text)
            assert g.ll == pytest.approx(ref.ll, abs=1e-3)
    # and the cache changes the answer: without the examples the scores differ
    plain = score_options_batch(model, tok, own, conts)
    assert plain[0].ll != pytest.approx(got[0].ll, abs=1e-3)
    assert build_prompt(items[0], shots) == text + own[0]


def test_letter_only_mode(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny
    data = load_mcq(write_text(tmp_path / "good.csv", GOOD_CMMLU))
    full, _ = evaluate_mcq_set(model, tok, data, scoring="loglik", metric="ll", n_boot=200)
    fast, preds = evaluate_mcq_set(model, tok, data, scoring="letter", metric="letter", n_boot=200)
    assert set(fast["variants"]) == {"letter"} and fast["metric"] == "letter"
    assert fast["accuracy"] == full["variants"]["letter"]
    assert all(set(p["pred"]) == {"letter"} for p in preds)
    with pytest.raises(ConfigError, match="not computed"):
        EvalConfig(mcq_scoring="letter", mcq_metric="ll_char")


def test_cloze_formulation(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """cf: the prompt is the question alone, each option's bare text is scored (== the naive loop); no letter
    variant; letter/generate still list the options; a letter metric with cf is refused up front."""
    model, tok = tiny
    data = load_mcq(write_text(tmp_path / "good.csv", GOOD_CMMLU))
    item = data.items[0]
    prompt = format_question(item, cloze=True)
    assert all(f"{k}. {v}" not in prompt for k, v in item.options.items()) and prompt.endswith("答案：")
    assert answer_text(item, "B", cloze=True) == item.options["B"]
    summary, preds = evaluate_mcq_set(model, tok, data, scoring="loglik", metric="ll_char", formulation="cf",
                                      n_boot=200, batch_size=3)
    assert summary["formulation"] == "cf" and set(summary["variants"]) == {"ll", "ll_char", "ll_tok"}
    text = shared_text(cloze=True)
    for it, p in zip(data.items, preds):
        ref = score_options_naive(model, tok, format_question(it, True), [answer_text(it, k, True) for k in it.options],
                                  shared_text=text)
        assert p["ll"] == pytest.approx([round(v, 4) for v in ref.ll], abs=2e-3)
    letter, _ = evaluate_mcq_set(model, tok, data, scoring="letter", metric="letter", formulation="cf", n_boot=200)
    assert letter["formulation"] == "mcf"
    with pytest.raises(ConfigError, match="not computed"):
        EvalConfig(mcq_scoring="loglik", mcq_metric="letter", mcq_formulation="cf")
    assert EvalConfig(mcq_scoring="loglik", mcq_metric="letter", mcq_formulation="mcf").metric == "letter"
    with pytest.raises(ValueError, match="formulation"):
        evaluate_mcq_set(model, tok, data, formulation="cloze")


def test_pick_variants() -> None:
    from qihuang.evaluate.mcq import OptionScores

    s = OptionScores(ll=[-4.0, -6.0], chars=[2, 6], tokens=[4, 2], letter=[-3.0, -1.0])
    assert pick(s, ["A", "B"]) == {"ll": "A", "ll_char": "B", "ll_tok": "A", "letter": "B"}


def test_evaluate_set_summary(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny
    data = load_mcq(write_text(tmp_path / "bad.csv", BAD_CSV))
    summary, preds = evaluate_mcq_set(model, tok, data, scoring="both", metric="ll_char", gen_max_new_tokens=3,
                                      n_boot=200, batch_size=2)
    assert summary["n"] == len(data.items) == len(preds)
    assert summary["skipped"] == 5 and summary["skipped_rows"] == [2, 3, 4, 5, 6]
    assert summary["skipped_reasons"]["answer not among options"] == 2
    lo, hi = summary["ci95"]
    assert lo <= summary["accuracy"] <= hi
    assert summary["accuracy"] == summary["variants"]["ll_char"]
    assert set(summary["variants"]) == {"ll", "ll_char", "ll_tok", "letter", "generate"}
    assert summary["chance"] == pytest.approx(sum(1 / len(it.options) for it in data.items) / len(data.items))
    assert sum(v["n"] for v in summary["by_category"].values()) == summary["n"]
    assert all("generated" in p for p in preds) and "unparsed" in summary


def test_fewshot_config_rules() -> None:
    with pytest.raises(ConfigError, match="mcq_fewshot_file"):
        EvalConfig(mcq_shots=2)
    with pytest.raises(ConfigError, match="dev"):
        EvalConfig(mcq_shots=2, mcq_fewshot_file="eval/tcmchat_choice/choice_herb_500.csv")
    with pytest.raises(ConfigError, match="also an evaluated"):
        EvalConfig(mcq_shots=1, mcq_fewshot_file="x_dev.csv", mcq_files=["x_dev.csv:10"])
    with pytest.raises(ConfigError, match="generate"):
        EvalConfig(mcq_metric="generate")
    assert EvalConfig(mcq_scoring="generate").metric == "generate"
    assert EvalConfig(mcq_scoring="letter").metric == "letter" and EvalConfig().metric == "ll_char"
    EvalConfig(mcq_shots=1, mcq_fewshot_file="eval/cmmlu/dev")


def test_fewshot_examples_from_dev_folder(tmp_path: Path) -> None:
    from qihuang.evaluate.runner import fewshot_examples

    dev = tmp_path / "dev"
    dev.mkdir()
    write_text(dev / "anatomy.csv", GOOD_CMMLU)
    test = write_text(tmp_path / "anatomy.csv", GOOD_CMMLU)
    ex = fewshot_examples(EvalConfig(mcq_shots=2, mcq_fewshot_file=str(dev)), test)
    assert [e.question for e in ex] == ["一年有几个季节", "水在零度会怎样"]
