"""The shared chat template: record normalisation, validation, assistant-only labels, and the byte-exact equality
of serving prompts and training prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qihuang.template import (
    DEFAULTS_FILE, IGNORE_INDEX, TemplateError, chat_defaults, check_messages, encode_dialogue, encode_prompt, render,
    render_prompt, to_messages, with_defaults,
)

DIALOGUE = [
    {"role": "system", "content": "你是中医古籍助手。"},
    {"role": "user", "content": "何谓阴阳？"},
    {"role": "assistant", "content": "阴阳者，天地之道也。"},
    {"role": "user", "content": "再举一例。"},
    {"role": "assistant", "content": "水火者，阴阳之征兆也。"},
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from qihuang.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_formats_normalise_to_the_same_messages() -> None:
    sharegpt = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                  {"from": "gpt", "value": "A"}], "meta": {"difficulty": 0.3}}
    openai = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                           {"role": "assistant", "content": "A"}]}
    alpaca = {"system": "S", "instruction": "Q", "input": "", "output": "A"}
    want = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert to_messages(sharegpt) == to_messages(openai) == to_messages(alpaca) == want
    hist = to_messages({"instruction": "翻译", "input": "上工治未病", "output": "好医生", "history": [["q0", "a0"]]})
    assert [m["role"] for m in hist] == ["user", "assistant", "user", "assistant"]
    assert hist[2]["content"] == "翻译\n上工治未病"
    assert to_messages({"question": "Q", "reference": "R", "source": "x"})[-1] == {"role": "assistant", "content": "R"}
    assert to_messages({"conversations": [{"from": "human", "value": "Q"}]}, system="SYS")[0]["content"] == "SYS"
    with pytest.raises(TemplateError) as exc:
        to_messages({"conversations": [{"from": "narrator", "value": "x"}]})
    assert exc.value.reason == "unknown_role"
    with pytest.raises(TemplateError):
        to_messages({"text": "plain"})


@pytest.mark.parametrize("msgs,reason", [
    ([{"role": "user", "content": "Q"}], "no_assistant_turn"),
    ([{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}], "roles_out_of_order"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
      {"role": "assistant", "content": "B"}], "roles_out_of_order"),
    ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "A"}], "empty_content"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"}],
     "ends_without_answer"),
    ([], "empty_dialogue"),
])
def test_check_messages_reasons(msgs: list[dict[str, str]], reason: str) -> None:
    assert check_messages(msgs) == (False, reason)


def test_labels_cover_assistant_turns_only(tok: Any) -> None:
    enc = encode_dialogue(tok, DIALOGUE)
    assert len(enc.input_ids) == len(enc.labels) and enc.turns == 2 and len(enc.spans) == 2
    trained = [i for i, x in enumerate(enc.labels) if x != IGNORE_INDEX]
    assert all(enc.labels[i] == enc.input_ids[i] for i in trained)
    text = tok.decode([enc.input_ids[i] for i in trained])
    assert "阴阳者，天地之道也。" in text and "水火者，阴阳之征兆也。" in text
    assert "何谓阴阳" not in text and "中医古籍" not in text and "再举一例" not in text
    assert text.count("<|im_end|>") == 2  # the end-of-turn marker is trained, so the model learns to stop
    last = encode_dialogue(tok, DIALOGUE, last_turn_only=True)
    last_text = tok.decode([x for x in last.labels if x != IGNORE_INDEX])
    assert "水火者" in last_text and "天地之道" not in last_text
    assert last.input_ids == enc.input_ids


def test_serving_prompt_equals_training_prompt_byte_for_byte(tok: Any) -> None:
    enc = encode_dialogue(tok, DIALOGUE)
    full_text = render(tok, DIALOGUE)
    assistant_turns = [i for i, m in enumerate(DIALOGUE) if m["role"] == "assistant"]
    for (start, _), turn in zip(enc.spans, assistant_turns):
        history = DIALOGUE[:turn]
        prompt = render_prompt(tok, history)
        trained_prefix = tok.decode(enc.input_ids[:start])
        assert trained_prefix.encode("utf-8") == prompt.encode("utf-8")
        assert full_text.encode("utf-8").startswith(prompt.encode("utf-8"))
        assert encode_prompt(tok, history) == enc.input_ids[:start]
        assert enc.labels[start - 1] == IGNORE_INDEX and enc.labels[start] != IGNORE_INDEX


def test_too_long_dialogue_loses_whole_turns_or_is_rejected(tok: Any) -> None:
    full = encode_dialogue(tok, DIALOGUE)
    first = encode_dialogue(tok, DIALOGUE[:3])
    cut = encode_dialogue(tok, DIALOGUE, max_length=len(full.input_ids) - 1)
    assert cut.truncated and cut.input_ids == first.input_ids and cut.turns == 1
    with pytest.raises(TemplateError) as exc:
        encode_dialogue(tok, DIALOGUE, max_length=len(first.input_ids) - 1)
    assert exc.value.reason == "too_long"


def test_trained_system_prompt_is_reapplied_when_serving(tmp_path: Path, tok: Any) -> None:
    (tmp_path / DEFAULTS_FILE).write_text('{"system_prompt": "你是中医古籍助手。"}', encoding="utf-8")
    defaults = chat_defaults(tmp_path)
    served = render_prompt(tok, with_defaults(DIALOGUE[1:2], defaults))
    trained = to_messages({"conversations": [{"from": "human", "value": "何谓阴阳？"},
                                             {"from": "gpt", "value": "阴阳者，天地之道也。"}]},
                          system="你是中医古籍助手。")
    enc = encode_dialogue(tok, trained)
    assert tok.decode(enc.input_ids[: enc.spans[0][0]]) == served
    assert with_defaults(DIALOGUE, defaults) == DIALOGUE  # an explicit system turn wins
    assert chat_defaults(tmp_path / "nowhere") == {}
