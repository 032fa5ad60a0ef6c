"""The one chat template shared by training, merge, chat, API and vLLM: the base model's own `chat_template`.

`to_messages` normalises qihuang/ShareGPT, Alpaca, OpenAI `messages` and QA records to role/content messages;
`render_prompt`/`encode_prompt` build the serving prompt; `encode_dialogue` builds training ids and labels (loss on
assistant tokens only) from the very same rendering, so the served prompt is a byte-exact prefix of the trained text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
_ROLE_ALIASES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "bot": "assistant", "model": "assistant",
}
IGNORE_INDEX = -100
DEFAULTS_FILE = "qihuang_template.json"


class TemplateError(ValueError):
    """A record cannot be turned into a valid dialogue; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _role(raw: Any) -> str:
    role = _ROLE_ALIASES.get(str(raw).strip().lower()) if raw is not None else None
    if role is None:
        raise TemplateError("unknown_role", repr(raw))
    return role


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TemplateError("bad_content", f"expected a string, got {type(value).__name__}")
    return value


def to_messages(record: dict[str, Any], system: str | None = None) -> list[Message]:
    """Normalise one record to `[{"role": system|user|assistant, "content": str}, ...]`.

    Accepted shapes: OpenAI `messages` (role/content), ShareGPT/qihuang `conversations` (from/value, human/gpt/
    system; an optional top-level `system`), Alpaca (`instruction`, `input`, `output`, optional `system` and
    `history` as [[question, answer], ...]) and QA (`question`, `reference` or `answer`). `system`, when given and
    the record has no system turn of its own, is put first. Raises TemplateError on an unknown shape or role;
    validity (order, emptiness) is checked by `check_messages`.
    """
    if not isinstance(record, dict):
        raise TemplateError("bad_record", f"expected an object, got {type(record).__name__}")
    msgs: list[Message] = []
    if "messages" in record:
        turns = record["messages"]
        if not isinstance(turns, list):
            raise TemplateError("bad_record", "`messages` is not a list")
        for t in turns:
            if not isinstance(t, dict):
                raise TemplateError("bad_record", "a message is not an object")
            msgs.append({"role": _role(t.get("role")), "content": _text(t.get("content"))})
    elif "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise TemplateError("bad_record", "`conversations` is not a list")
        for t in turns:
            if not isinstance(t, dict):
                raise TemplateError("bad_record", "a turn is not an object")
            role = t.get("from", t.get("role"))
            msgs.append({"role": _role(role), "content": _text(t.get("value", t.get("content")))})
    elif "instruction" in record:
        for pair in record.get("history") or []:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise TemplateError("bad_record", "`history` items must be [question, answer]")
            msgs += [{"role": "user", "content": _text(pair[0])}, {"role": "assistant", "content": _text(pair[1])}]
        instruction, extra = _text(record.get("instruction")), _text(record.get("input"))
        user = f"{instruction}\n{extra}" if instruction.strip() and extra.strip() else instruction + extra
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record.get("output"))}]
    elif "question" in record:
        answer = record.get("reference", record.get("answer"))
        msgs = [{"role": "user", "content": _text(record["question"])}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": _text(answer)})
    else:
        raise TemplateError("unknown_format", f"keys {sorted(record)[:6]}")
    rec_system = record.get("system")
    if isinstance(rec_system, str) and rec_system.strip() and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": rec_system})
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def check_messages(messages: Sequence[Message]) -> tuple[bool, str]:
    """(keep, reason). Rules: at most one system turn, first; then user/assistant alternating from a user turn;
    no empty content; the dialogue ends with an assistant turn (so at least one assistant turn)."""
    if not messages:
        return False, "empty_dialogue"
    body = list(messages)
    if body[0]["role"] == "system":
        if not body[0]["content"].strip():
            return False, "empty_content"
        body = body[1:]
    if any(m["role"] == "system" for m in body):
        return False, "roles_out_of_order"
    if not any(m["role"] == "assistant" for m in body):
        return False, "no_assistant_turn"
    for i, m in enumerate(body):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            return False, "roles_out_of_order"
        if not m["content"].strip():
            return False, "empty_content"
    if body[-1]["role"] != "assistant":
        return False, "ends_without_answer"
    return True, "ok"


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The base model's own chat template applied to `messages` (text, no tokenisation)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("no_chat_template", f"{type(tokenizer).__name__} has no chat_template")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def render_prompt(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """The serving prompt: `messages` (ending with a user turn) rendered with the generation prompt appended.

    Byte-identical to the prefix the model saw before each assistant answer during training."""
    return render(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered template text (special tokens come from the template, none are added)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of the serving prompt (what training saw before the answer, id for id)."""
    return encode_text(tokenizer, render_prompt(tokenizer, messages))


def assistant_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """(full text, character spans of each assistant turn): from the end of the generation prompt that precedes
    the answer to the end of that turn's rendering (answer + the template's end-of-turn marker)."""
    text = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not text.startswith(before) or not text.startswith(through) or len(through) <= len(before):
            raise TemplateError("template_not_prefix_stable", f"turn {i}")
        spans.append((len(before), len(through)))
    return text, spans


@dataclass
class Encoded:
    """Training ids of one dialogue with labels (-100 outside the trained assistant turns)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    turns: int = 0
    spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _encode_full(tokenizer: Any, messages: Sequence[Message], last_turn_only: bool) -> Encoded:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    trained = spans[-1:] if last_turn_only else spans
    labels = [IGNORE_INDEX] * len(ids)
    tok_spans: list[tuple[int, int]] = []
    for a, b in trained:
        idx = [j for j, (s, e) in enumerate(offsets) if s >= a and s < b and e > s]
        for j in idx:
            labels[j] = ids[j]
        if idx:
            tok_spans.append((idx[0], idx[-1] + 1))
    return Encoded(ids, labels, turns=len(spans), spans=tok_spans)


def encode_dialogue(tokenizer: Any, messages: Sequence[Message], max_length: int | None = None,
                    last_turn_only: bool = False) -> Encoded:
    """Ids and labels for one valid dialogue (see `check_messages`).

    Loss on assistant tokens only (every assistant turn, or only the last with `last_turn_only`).
    Rule for a dialogue longer than `max_length` tokens: drop whole turns from the end, keeping the longest prefix
    that ends with an assistant turn and fits; if even the first answer does not fit, raise TemplateError
    ("too_long"). Truncation is flagged in `Encoded.truncated`.
    """
    ok, reason = check_messages(messages)
    if not ok:
        raise TemplateError(reason)
    msgs = list(messages)
    enc = _encode_full(tokenizer, msgs, last_turn_only)
    if max_length is None or len(enc.input_ids) <= max_length:
        return enc
    ends = [i for i, m in enumerate(msgs) if m["role"] == "assistant"][:-1]
    for end in reversed(ends):
        cand = _encode_full(tokenizer, msgs[: end + 1], last_turn_only)
        if len(cand.input_ids) <= max_length:
            cand.truncated = True
            return cand
    raise TemplateError("too_long", f"{len(enc.input_ids)} tokens > max_length {max_length}")


def chat_defaults(model_dir: str | Path) -> dict[str, Any]:
    """Chat settings a training stage saved beside the model (`qihuang_template.json`: e.g. `system_prompt`)."""
    path = Path(model_dir) / DEFAULTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def with_defaults(messages: Sequence[Message], defaults: dict[str, Any]) -> list[Message]:
    """Put the trained default system prompt first when the conversation has no system turn (serving side)."""
    system = defaults.get("system_prompt")
    msgs = list(messages)
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def prompt_and_answer(messages: Sequence[Message]) -> tuple[list[Message], str]:
    """Split a dialogue ending with an assistant turn into (history to prompt with, reference answer)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise TemplateError("ends_without_answer")
    return list(messages[:-1]), messages[-1]["content"]
