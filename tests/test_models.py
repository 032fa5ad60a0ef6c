"""Base models: the smollm2-135m preset converts once, reloads fast and generates; bad specs fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from qihuang.models import ModelError, list_models, load_model, prepare_model


def test_smollm2_preset_loads_from_its_cache_and_generates() -> None:
    import torch

    cached = prepare_model("smollm2-135m")  # converts once (about 30 s) if not cached
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    model, tok = load_model("smollm2-135m")
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # loaded from the cache, not converted again
    assert model.config.model_type == "llama" and model.num_parameters() > 100e6
    enc = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "4" in text


def test_tiny_llama_is_tiny_and_shares_tokenizer(tiny_model_dir: Path) -> None:
    model, tok = load_model(str(tiny_model_dir))
    assert model.num_parameters() < 5e6
    assert model.config.vocab_size == len(tok) and tok.chat_template


def test_bad_specs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        prepare_model("no-such-model")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        prepare_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="has no weights"):
        prepare_model(str(tmp_path / "m"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match="broken.gguf: cannot load GGUF"):
        prepare_model(str(bad))


def test_list_models_reports_presets() -> None:
    names = {row["name"] for row in list_models()}
    assert {"smollm2-135m", "gemma3-270m", "tiny-llama"} <= names


def test_model_folder_without_tokenizer_files_says_so(tiny_model_dir: Path, tmp_path: Path) -> None:
    """#16 defect 12: no tokenizer files gave "You need to have sentencepiece or tiktoken installed"."""
    import shutil

    from qihuang.models import ModelError, load_model, load_tokenizer

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.is_file() and not f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, bare / f.name)
    for load in (load_tokenizer, load_model):
        with pytest.raises(ModelError, match="no tokenizer files") as info:
            load(bare)
        assert str(bare) in str(info.value) and "sentencepiece" not in str(info.value)


def test_hub_ids_resolve_through_the_hugging_face_cache(tmp_path: Path, tiny_model_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`org/name` is looked up in the hub cache (offline here: no network is touched); a model neither cached nor
    reachable is a ModelError naming the cache folder."""
    import shutil

    from qihuang.models import prepare_model

    cache = tmp_path / "hub"
    snap = cache / "models--qihuang-test--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snap)
    (cache / "models--qihuang-test--tiny" / "refs").mkdir()
    (cache / "models--qihuang-test--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert prepare_model("qihuang-test/tiny") == snap
    with pytest.raises(ModelError, match=f"not in the Hugging Face cache \\({cache}\\) offline"):
        prepare_model("qihuang-test/absent")


def test_an_adapter_folder_without_its_base_is_a_clear_error(tmp_path: Path) -> None:
    from qihuang.models import ModelError, adapter_base, load_model

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
    with pytest.raises(ModelError, match="no base_model_name_or_path"):
        load_model(folder)
    (folder / "adapter_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="unreadable adapter config"):
        adapter_base(folder)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    assert adapter_base(folder) is None  # full weights beside it: a model folder, not an adapter
