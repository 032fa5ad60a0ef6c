"""Built-in chat templates for bases that have none (or the wrong one): the recipe/CLI field `chat_template` names
one (`chatml`, `llama2`, `ziya`), a Jinja file, or `auto` (the base's own). Training stages put the choice into the
tokenizer they save, so chat, serve and export render exactly what training used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qihuang.config import ConfigError

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML (Qwen, SmolLM2): needs `<|im_start|>`/`<|im_end|>` in the vocabulary."""

LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if m['role'] == 'user' %}"
    "{% if loop.first and system %}{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content']"
    " + ' [/INST]' }}{% else %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}{% endif %}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
"""LLaMA-2 chat (`[INST] … [/INST]`, system in `<<SYS>>`); the answer ends with the EOS token."""

ZIYA = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\\n' }}"
    "{% elif m['role'] == 'user' %}{{ '<human>:' + m['content'] + '\\n' }}"
    "{% else %}{{ '<bot>:' + m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<bot>:' }}{% endif %}"
)
"""Ziya-LLaMA / HuangDI (`<human>:` … `<bot>:`); the answer ends with the EOS token."""

BUILTIN: dict[str, str] = {"chatml": CHATML, "llama2": LLAMA2, "ziya": ZIYA}
NEEDS_TOKENS: dict[str, tuple[str, ...]] = {"chatml": ("<|im_start|>", "<|im_end|>"), "llama2": (), "ziya": ()}
AUTO = "auto"
"""Keep the base model's own template."""


def resolve(spec: str) -> str | None:
    """The Jinja text `spec` names: None for `auto`/empty (the base's own), a built-in name, or a `.jinja` file."""
    name = (spec or AUTO).strip()
    if name.lower() == AUTO:
        return None
    if name.lower() in BUILTIN:
        return BUILTIN[name.lower()]
    path = Path(name).expanduser()
    if path.suffix in (".jinja", ".j2", ".txt") and path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if "messages" not in text:
            raise ConfigError(f"chat_template {path}: not a chat template (it never reads `messages`)")
        return text
    raise ConfigError(f"chat_template {spec!r}: use {AUTO}, one of {', '.join(BUILTIN)}, or a .jinja file that exists")


def apply(tokenizer: Any, spec: str) -> Any:
    """Set the chosen template on `tokenizer` (in place; returned); `auto` keeps its own and refuses a tokenizer that
    has none. A built-in template whose special tokens the vocabulary lacks is refused (it would be trained on as
    plain text pieces)."""
    text = resolve(spec)
    if text is None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"this model's tokenizer has no chat template (a pretrained base such as LLaMA-2 or Ziya): "
                              f"set chat_template to one of {', '.join(BUILTIN)} or a .jinja file")
        return tokenizer
    missing = [t for t in NEEDS_TOKENS.get(spec.strip().lower(), ()) if t not in tokenizer.get_vocab()]
    if missing:
        raise ConfigError(f"chat_template {spec!r} needs {', '.join(missing)} in the vocabulary, which this tokenizer "
                          f"lacks; choose {' or '.join(n for n, t in NEEDS_TOKENS.items() if not t)} for this base")
    tokenizer.chat_template = text
    return tokenizer
