"""Chat templates for any base (`qihuang.chat_templates`): built-ins render prefix-stable dialogues, a base without
a template is fine-tuned with a chosen one, and the trained model's tokenizer carries it into serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from qihuang.config import ConfigError

DIALOGUE = [{"role": "system", "content": "你是中医古籍助手。"}, {"role": "user", "content": "何谓阴阳"},
            {"role": "assistant", "content": "阴阳者天地之道也"}, {"role": "user", "content": "再说"},
            {"role": "assistant", "content": "天地之道"}]


@pytest.fixture()
def tok(tiny_model_dir: Path) -> Any:
    from qihuang.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("name, opens, answer_end", [("ziya", "你是中医古籍助手。\n<human>:何谓阴阳\n<bot>:", "eos"),
                                                     ("llama2", "[INST] <<SYS>>\n你是中医古籍助手。", "eos"),
                                                     ("chatml", "<|im_start|>system\n", "<|im_end|>")])
def test_builtin_templates_render_prefix_stable_dialogues(tok: Any, name: str, opens: str, answer_end: str) -> None:
    from qihuang import chat_templates
    from qihuang.template import assistant_spans, encode_dialogue, render_prompt

    chat_templates.apply(tok, name)
    text, spans = assistant_spans(tok, DIALOGUE)
    assert opens in text and len(spans) == 2
    answer = text[slice(*spans[0])]
    assert answer.lstrip().startswith("阴阳者天地之道也")
    assert (tok.eos_token if answer_end == "eos" else answer_end) in answer  # the trained turn ends the answer
    enc = encode_dialogue(tok, DIALOGUE)
    assert enc.turns == 2 and enc.n_label_tokens > 0
    prompt = render_prompt(tok, DIALOGUE[:2])
    assert text.startswith(prompt)  # serving's prompt is the trained text's prefix
    if name == "ziya":
        assert prompt.endswith("<bot>:")


def test_names_files_and_refusals(tmp_path: Path, tok: Any) -> None:
    from qihuang import chat_templates
    from qihuang.finetune.preference import DPOConfig
    from qihuang.finetune.sft import SFTConfig

    assert chat_templates.resolve("auto") is None and chat_templates.resolve("ZIYA") == chat_templates.ZIYA
    custom = tmp_path / "mine.jinja"
    custom.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}", encoding="utf-8")
    assert chat_templates.resolve(str(custom)).startswith("{% for m in messages")
    with pytest.raises(ConfigError, match="chatml, llama2, ziya"):
        SFTConfig(chat_template="vicuna")
    with pytest.raises(ConfigError, match="chat_template"):
        DPOConfig(chat_template=str(tmp_path / "missing.jinja"))

    class NoChatML:
        chat_template = None

        def get_vocab(self) -> dict[str, int]:
            return {"a": 0}

    with pytest.raises(ConfigError, match="<\\|im_start\\|>"):
        chat_templates.apply(NoChatML(), "chatml")
    with pytest.raises(ConfigError, match="no chat template"):
        chat_templates.apply(NoChatML(), "auto")


def test_a_base_without_template_is_tuned_with_ziya_and_served_with_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    from qihuang.finetune.sft import SFTConfig, sft
    from qihuang.runs import StageDir
    from qihuang.serve.engine import Engine

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    for name in ("chat_template.jinja",):
        (base / name).unlink(missing_ok=True)
    cfg_path = base / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    tok_cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(tok_cfg, ensure_ascii=False), encoding="utf-8")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"第{i}问何谓阴阳", "answer": "阴阳者天地之道也"},
                                       ensure_ascii=False) + "\n" for i in range(12)), encoding="utf-8")
    with pytest.raises(ConfigError, match="no chat template"):
        sft(SFTConfig(data=[data], max_steps=1, qa_samples=0, max_length=64), base, StageDir(tmp_path / "auto"))
    cfg = SFTConfig(data=[data], max_steps=2, qa_samples=0, max_length=64, chat_template="ziya", eval_steps=2,
                    early_stopping_patience=0)
    out = StageDir(tmp_path / "sft")
    sft(cfg, base, out)
    engine = Engine.load(out.path / "model")
    prompt = engine.prompts.render([{"role": "user", "content": "何谓阴阳"}])
    assert prompt.startswith("<human>:何谓阴阳\n") and prompt.endswith("<bot>:")
    from qihuang.serve.engine import SamplingParams

    last = list(engine.generate([{"role": "user", "content": "何谓阴阳"}], SamplingParams(max_new_tokens=4)))[-1]
    assert 1 <= last.completion_tokens <= 4 and last.prompt_tokens == len(engine.prompts.encode(prompt))
