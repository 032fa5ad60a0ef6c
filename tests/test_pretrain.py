"""Continual pretraining on tiny-llama: end to end, LoRA with new-token rows, exact resume after kill -9,
corrupt checkpoints, and real 2-process DDP (gloo) against a single process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qihuang.config import ConfigError
from qihuang.pretrain import PretrainConfig, pretrain
from qihuang.runs import StageDir, run_stage
from qihuang.tokenizer import TokenizerConfig, extend_tokenizer
from tests.finetune.helpers import _DEEPSPEED as DEEPSPEED
from tests.finetune.helpers import accelerate_launch, assert_loads, cpu_config
from tests.training.helpers import write_passages

QIHUANG = str(Path(sys.executable).parent / "qihuang")
FAST = dict(seq_len=32, batch_size=2, warmup_steps=1, general_ratio=0.0, eval_chars=300, eval_seq_len=64,
            tensorboard=False, checkpoint_every_minutes=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ptdata")
    return write_passages(d / "train.jsonl", 30, 3), write_passages(d / "heldout.jsonl", 4, 4, book="留书")


@pytest.fixture(scope="module")
def extended(tiny_model_dir: Path, data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = StageDir(tmp_path_factory.mktemp("ext") / "tokenizer")
    extend_tokenizer(TokenizerConfig(), tiny_model_dir, *data, out)
    return out.path / "model"


def _losses(stage: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_full_pretrain_end_to_end(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "pretrain")
    cfg = PretrainConfig(max_steps=16, learning_rate=3e-3, checkpoint_every_steps=5, eval_every=8, **FAST)
    summary = run_stage(out, cfg, lambda: pretrain(cfg, extended, *data, out))
    assert out.is_done() and (out.path / "loss.png").stat().st_size > 1000
    assert summary["steps"] == 16 and summary["tokens"] == 16 * 2 * 32 and summary["tokens_per_s"] > 0
    assert summary["skipped_steps"] == 0 and summary["bpc_base"] > summary["bpc_after"]
    assert summary["bpc_after"] < summary["bpc_before"]
    losses = _losses(out.path)
    assert sum(losses[s] for s in (14, 15, 16)) < sum(losses[s] for s in (1, 2, 3))
    rows = out.metrics().read()
    assert any("bpc" in r and r.get("step") == 8 for r in rows) and all("lr" in r for r in rows if "loss" in r)
    before, after = _weights(extended), _weights(out.path / "model")
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert sorted(p.name for p in (out.path / "checkpoints").iterdir()) == ["step-0000010", "step-0000015"]
    from qihuang.models import load_model

    model, tok = load_model(out.path / "model")
    assert len(tok) == model.get_input_embeddings().weight.shape[0]


def test_progress_bar_shows_steps_and_loss(extended: Path, data: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QIHUANG_PROGRESS", "1")
    cfg = PretrainConfig(max_steps=4, log_every=1, **FAST)
    pretrain(cfg, extended, *data, StageDir(tmp_path / "shown"))
    err = capsys.readouterr().err
    assert "pretrain" in err and "4/4" in err and "loss=" in err and "tok_s=" in err
    monkeypatch.setenv("QIHUANG_PROGRESS", "0")
    pretrain(cfg, extended, *data, StageDir(tmp_path / "quiet"))
    assert "4/4" not in capsys.readouterr().err


def test_lora_trains_new_rows_and_merges(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "lora")
    cfg = PretrainConfig(max_steps=6, learning_rate=1e-2, mode="lora", lora_r=4, checkpoint_every_steps=0,
                         eval_base=False, **FAST)
    summary = pretrain(cfg, extended, *data, out)
    assert summary["trainable_params"] < summary["params"] / 2
    ext = json.loads((extended / "qihuang_extension.json").read_text())
    lo, hi = ext["added_range"]
    before, after = _weights(extended), _weights(out.path / "model")
    emb_b, emb_a = before["model.embed_tokens.weight"], after["model.embed_tokens.weight"]
    assert torch.equal(emb_b[:lo], emb_a[:lo])  # old rows untouched
    assert not torch.allclose(emb_b[lo:hi], emb_a[lo:hi])  # new rows trained
    key = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.allclose(before[key], after[key])  # LoRA merged into the saved weights
    assert not any("lora" in k for k in after)


def test_freeze_layers_keeps_bottom(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "frozen")
    cfg = PretrainConfig(max_steps=3, learning_rate=1e-2, freeze_layers=1, checkpoint_every_steps=0, eval_base=False,
                         **FAST)
    pretrain(cfg, extended, *data, out)
    before, after = _weights(extended), _weights(out.path / "model")
    assert torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(before["model.layers.1.mlp.up_proj.weight"], after["model.layers.1.mlp.up_proj.weight"])


def test_embeddings_mode_trains_only_embeddings(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "emb")
    cfg = PretrainConfig(max_steps=3, learning_rate=1e-2, mode="embeddings", checkpoint_every_steps=0,
                         eval_base=False, **FAST)
    summary = pretrain(cfg, extended, *data, out)
    before, after = _weights(extended), _weights(out.path / "model")
    assert summary["trainable_params"] == before["model.embed_tokens.weight"].numel()  # tied LM head: same rows
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed == ["model.embed_tokens.weight"]
    with pytest.raises(ConfigError, match="freeze_layers"):
        PretrainConfig(mode="embeddings", freeze_layers=1)


def test_embed_lr_mult_zero_freezes_embeddings(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "noemb")
    cfg = PretrainConfig(max_steps=3, learning_rate=1e-2, embed_lr_mult=0.0, checkpoint_every_steps=0,
                         eval_base=False, **FAST)
    summary = pretrain(cfg, extended, *data, out)
    before, after = _weights(extended), _weights(out.path / "model")
    emb = before["model.embed_tokens.weight"]
    assert summary["trainable_params"] == summary["params"] - emb.numel()  # tied LM head: no gradient kept either
    assert torch.equal(emb, after["model.embed_tokens.weight"])
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(ConfigError, match="embed_lr_mult=0"):
        PretrainConfig(mode="embeddings", embed_lr_mult=0.0)


def test_embedding_lr_multiplier_groups(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from qihuang.training.loop import _optimizer
    from qihuang.training.settings import LoopSettings

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    s = LoopSettings(seq_len=8, batch_size=1, learning_rate=1e-3, warmup_steps=0, weight_decay=0.1, max_steps=1,
                     embed_lr_mult=5.0)  # the rest: the documented defaults
    opt = _optimizer(model, list(model.parameters()), s, torch.device("cpu"))
    emb = model.get_input_embeddings().weight
    group = next(g for g in opt.param_groups if any(p is emb for p in g["params"]))
    assert group["lr_mult"] == 5.0 and group["weight_decay"] == 0.0 and len(group["params"]) == 1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_nan_gradient_with_finite_loss_is_not_applied(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A step whose gradient is NaN (loss finite) is skipped: the weights stay finite and training goes on."""
    import numpy as np
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from qihuang.runs import MetricsLog
    from qihuang.training.data import PackedData
    from qihuang.training.loop import train_loop
    from qihuang.training.settings import LoopSettings

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    rng = np.random.default_rng(0)
    stream = rng.integers(3, model.config.vocab_size, 2000)
    data = PackedData(stream=stream, doc_start=np.zeros(len(stream), dtype=bool), seq_len=16, seed=0)
    calls = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return torch.full_like(grad, float("nan")) if calls["n"] == 4 else grad

    model.model.layers[0].mlp.down_proj.weight.register_hook(poison)
    s = LoopSettings(seq_len=16, batch_size=2, learning_rate=1e-3, warmup_steps=0, max_steps=6, spike_factor=0.0,
                     checkpoint_every_steps=0, checkpoint_every_minutes=0, keep_checkpoints=1)
    before = model.model.layers[1].mlp.up_proj.weight.detach().clone()
    log = MetricsLog(tmp_path / "metrics.jsonl")
    out = train_loop(model, data, s, Accelerator(cpu=True), tmp_path / "ckpt", log, None)
    assert out["steps"] == 6 and out["grad_skipped_steps"] == 1 and out["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.model.layers[1].mlp.up_proj.weight, before)  # the other steps were applied
    rows = log.read()
    decisions = [r["decision"] for r in rows if "decision" in r]
    assert decisions.count("skip") == 1 and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def _oom_run(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits: int, batch_size: int,
             grad_accum: int) -> tuple[dict, torch.nn.Module, list[dict]]:
    """train_loop for 4 steps with micro-batches above `fits` sequences raising torch.OutOfMemoryError (as CUDA's
    allocator does); its result, trained model and metrics rows."""
    import numpy as np
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from qihuang.runs import MetricsLog
    from qihuang.training import loop
    from qihuang.training.data import PackedData
    from qihuang.training.settings import LoopSettings

    class Bounded(loop.CausalLMLoss):
        def forward(self, input_ids: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[0] > fits:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return super().forward(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(loop, "CausalLMLoss", Bounded)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    stream = np.random.default_rng(0).integers(3, model.config.vocab_size, 3000)
    data = PackedData(stream=stream, doc_start=np.zeros(len(stream), dtype=bool), seq_len=16, seed=0)
    s = LoopSettings(seq_len=16, batch_size=batch_size, grad_accum=grad_accum, learning_rate=1e-3, warmup_steps=0,
                     max_steps=4, checkpoint_every_steps=0, checkpoint_every_minutes=0, keep_checkpoints=1)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    out = loop.train_loop(model, data, s, Accelerator(cpu=True), tmp_path / "ckpt", log, None)
    return out, model, log.read()


def test_out_of_memory_carries_on_at_the_batch_that_fits(tiny_model_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A micro-batch of 8 that runs out of memory (4 fit): the step is redone at 4 and training goes on there with
    the same global batch — the same losses and weights as a run of batch 4 x grad_accum 2 — and says so."""
    out, model, rows = _oom_run(tiny_model_dir, tmp_path / "a", monkeypatch, fits=4, batch_size=8, grad_accum=1)
    ref, ref_model, ref_rows = _oom_run(tiny_model_dir, tmp_path / "b", monkeypatch, fits=4, batch_size=4,
                                        grad_accum=2)
    assert out["steps"] == 4 and out["micro_batch_size"] == 4 and ref["micro_batch_size"] == 4
    events = [{k: v for k, v in r.items() if k != "time"} for r in rows if r.get("event") == "micro_batch_reduced"]
    assert events == [{"event": "micro_batch_reduced", "step": 0, "was": 8, "batch_size": 4}]
    assert not [r for r in ref_rows if r.get("event")]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx([r["loss"] for r in ref_rows if "loss" in r],
                                                                     rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_out_of_memory_with_nothing_that_fits_says_what_to_lower(tiny_model_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from qihuang.training.loop import MicroBatchTooLarge

    with pytest.raises(MicroBatchTooLarge, match="batch_size=2 at seq_len=16 ran out of memory; even batch_size=1"):
        _oom_run(tiny_model_dir, tmp_path, monkeypatch, fits=0, batch_size=2, grad_accum=1)


def test_schedule_fitted_to_time_budget(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    """max_minutes with a huge max_steps: the cosine is shortened to what the budget allows, so it ends annealed."""
    out = StageDir(tmp_path / "fit")
    cfg = PretrainConfig(max_steps=100_000, max_minutes=0.3, learning_rate=1e-3, min_lr_ratio=0.1,
                         checkpoint_every_steps=0, eval_base=False, **FAST)
    summary = pretrain(cfg, extended, *data, out)
    event = next(r for r in out.metrics().read() if r.get("event") == "schedule_fitted")
    assert event["step"] == 8 and summary["schedule_steps"] == event["schedule_steps"] < 100_000
    assert summary["stop_reason"] == "time_budget"
    lrs = [r["lr"] for r in out.metrics().read() if "loss" in r]
    assert lrs[-1] < 0.5 * max(lrs)  # annealed well below the peak by the end of the budget


def _args(out: Path, model: Path, data: tuple[Path, Path], extra: list[str]) -> list[str]:
    """`pretrain` and its flags for the tiny runs (later flags in `extra` override earlier ones)."""
    return ["pretrain", "--model", str(model), "--train", str(data[0]), "--heldout", str(data[1]), "--out", str(out),
            "--seq-len", "32", "--batch-size", "2", "--warmup-steps", "1", "--general-ratio", "0", "--eval-chars",
            "200", "--eval-seq-len", "64", "--no-tensorboard", "--no-eval-base", "--checkpoint-every-minutes", "0",
            "--learning-rate", "3e-3", *extra]


def _cli(out: Path, model: Path, data: tuple[Path, Path], extra: list[str], env: dict[str, str] | None = None,
         launcher: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*(launcher or [QIHUANG]), *_args(out, model, data, extra)], capture_output=True,
                          text=True, env=full_env, timeout=300)


def test_exact_resume_after_kill(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    extra = ["--max-steps", "10", "--checkpoint-every-steps", "4"]
    killed = _cli(tmp_path / "a", extended, data, extra, env={"QIHUANG_FAULT_AT_STEP": "6"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "a" / "done").exists() and (tmp_path / "a" / "checkpoints" / "step-0000004").is_dir()
    resumed = _cli(tmp_path / "a", extended, data, extra)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["resumed_from_step"] == 4
    straight = StageDir(tmp_path / "b")
    cfg = PretrainConfig(max_steps=10, checkpoint_every_steps=4, learning_rate=3e-3, eval_chars=200, eval_base=False,
                         **{k: v for k, v in FAST.items() if k != "eval_chars"})
    run_stage(straight, cfg, lambda: pretrain(cfg, extended, *data, straight))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert a == b  # the same data order and bit-identical losses
    wa, wb = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_corrupt_checkpoint_falls_back(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    out = StageDir(tmp_path / "c")
    cfg = PretrainConfig(max_steps=6, learning_rate=3e-3, checkpoint_every_steps=2, keep_checkpoints=3, eval_base=False,
                         **FAST)
    pretrain(cfg, extended, *data, out)
    ckpts = out.path / "checkpoints"
    newest = ckpts / "step-0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    again = StageDir(tmp_path / "c")
    summary = pretrain(PretrainConfig(**{**cfg.__dict__, "max_steps": 8}), extended, *data, again)
    assert summary["resumed_from_step"] == 2
    warnings = [r for r in again.metrics().read() if r.get("event") == "warning"]
    assert any(str(newest) in r["message"] and "truncated" in r["message"] for r in warnings)


def test_config_checks() -> None:
    with pytest.raises(ConfigError):
        PretrainConfig(general_ratio=1.0)
    with pytest.raises(ConfigError):
        PretrainConfig(mode="lora", freeze_layers=2)
    with pytest.raises(ConfigError):
        PretrainConfig(max_steps=10, warmup_steps=10)


def test_loop_settings_are_the_config() -> None:
    """The loop's settings are declared once (LoopSettings, documented) and PretrainConfig inherits them: keys and
    flags stay flat, and train_loop takes the config itself (no field-by-field copy)."""
    import dataclasses

    from click.testing import CliRunner

    from qihuang.config import field_docs
    from qihuang.pretrain import pretrain_cli
    from qihuang.training.settings import LoopSettings

    names = {f.name for f in dataclasses.fields(LoopSettings)}
    assert names <= {f.name for f in dataclasses.fields(PretrainConfig)}
    assert not names & set(PretrainConfig.__annotations__)  # inherited, not redeclared
    assert all(field_docs(LoopSettings)[n] == field_docs(PretrainConfig)[n] for n in names)
    assert PretrainConfig(max_steps=70).schedule_length == 70
    assert PretrainConfig(max_steps=70, schedule_steps=90).schedule_length == 90
    assert "Peak learning rate." in CliRunner().invoke(pretrain_cli, ["--help"]).output
    with pytest.raises(ConfigError, match="pretrain.log_every"):
        LoopSettings(log_every=0)


_TWO_PROC = ["--max-steps", "4", "--checkpoint-every-steps", "0", "--batch-size", "1", "--learning-rate", "1e-3"]
"""Flags of the 2-process runs: 4 steps of 1 sequence per process x grad_accum 2 (a global batch of 4 sequences)."""


def _single_process(tmp_path: Path, extended: Path, data: tuple[Path, Path]) -> Path:
    """One process with the 2-process runs' global batch: batch 1 x grad_accum 4."""
    single = StageDir(tmp_path / "single")
    cfg = PretrainConfig(max_steps=4, checkpoint_every_steps=0, batch_size=1, grad_accum=4, learning_rate=1e-3,
                         eval_chars=200, eval_base=False, **{k: v for k, v in FAST.items()
                                                            if k not in ("eval_chars", "batch_size")})
    run_stage(single, cfg, lambda: pretrain(cfg, extended, *data, single))
    return single.path


def _assert_matches(single: Path, multi: Path, base: Path, rel: float, atol: float) -> None:
    """Two processes logged the single process's losses (one row per step: the main process alone logs) and saved
    its weights, which training moved away from `base`'s."""
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 4
    s, d = _losses(single), _losses(multi)
    assert sorted(s) == sorted(d) == [1, 2, 3, 4]
    for k in s:
        assert d[k] == pytest.approx(s[k], rel=rel)
    ws, wd, w0 = _weights(single / "model"), _weights(multi / "model"), _weights(base)
    assert any(not torch.equal(ws[k], w0[k]) for k in ws)
    for k in ws:
        torch.testing.assert_close(wd[k], ws[k], rtol=1e-4, atol=atol)


@pytest.mark.slow
def test_ddp_two_processes_match_single(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    single = _single_process(tmp_path, extended, data)
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517",
                "--no-python", QIHUANG]
    ddp = _cli(tmp_path / "ddp", extended, data, [*_TWO_PROC, "--grad-accum", "2"], launcher=torchrun)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    _assert_matches(single, tmp_path / "ddp", extended, rel=1e-5, atol=1e-5)


@pytest.mark.slow
@DEEPSPEED
@pytest.mark.parametrize("preset", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_two_processes_match_single(extended: Path, data: tuple[Path, Path], tmp_path: Path,
                                              preset: str) -> None:
    """`accelerate launch` with a CPU copy of a shipped DeepSpeed preset (gloo): the loop's own micro-batches and LR
    schedule through DeepSpeed's engine (ZeRO-2: optimizer state and gradients sharded over the 2 processes; ZeRO-3:
    parameters too, evaluated on both, gathered at the end) give the single process's losses and weights, also when
    killed after step 3 and resumed from DeepSpeed's checkpoint of step 2; the saved model loads."""
    single = _single_process(tmp_path, extended, data)
    config = cpu_config(tmp_path / "ds.yaml", 2, preset)
    args = _args(tmp_path / "zero2", extended, data, [*_TWO_PROC, "--grad-accum", "2", "--checkpoint-every-steps", "2",
                                                      "--eval-every", "2"])
    killed = accelerate_launch(config, args, extra_env={"QIHUANG_FAULT_AT_STEP": "3"})  # both kill -9 after step 3
    assert killed.returncode != 0 and not (tmp_path / "zero2" / "done").exists()
    assert list((tmp_path / "zero2" / "checkpoints").glob("step-0000002/**/*optim_states.pt"))  # DeepSpeed's files
    run = accelerate_launch(config, args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "zero2" / "summary.json").read_text())["resumed_from_step"] == 2
    _assert_matches(single, tmp_path / "zero2", extended, rel=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "zero2" / "summary.json").read_text())["distributed_type"] == "DEEPSPEED"
    assert_loads(tmp_path / "zero2" / "model")
    rows = [json.loads(line) for line in (tmp_path / "zero2" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in rows if "loss" in r)  # the engine's norm before clipping
    assert [r["step"] for r in rows if "bpc" in r and not r.get("final")] == [0, 2]  # before; the killed run at 2


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "mode"), [pytest.param("deepspeed_zero3.yaml", "DeepSpeed ZeRO-3", marks=DEEPSPEED),
                                              ("fsdp.yaml", "FSDP")])
def test_lora_with_sharded_parameters_is_refused_before_training(extended: Path, data: tuple[Path, Path],
                                                                 tmp_path: Path, preset: str, mode: str) -> None:
    config = cpu_config(tmp_path / "launch.yaml", 2, preset)
    run = accelerate_launch(config, _args(tmp_path / "out", extended, data, [*_TWO_PROC, "--mode", "lora"]))
    assert run.returncode != 0
    assert f"mode=lora under {mode} is not supported" in run.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_fsdp_two_processes_match_single(extended: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    """`accelerate launch` with a CPU copy of the shipped FSDP preset: torch's FSDP2 over gloo shards the parameters,
    gradients and optimizer state of the loop's model over the 2 processes (accelerate alone would run it replicated
    on the CPU), evaluates on both, gathers the weights at the end, and gives the single process's losses and
    weights — also when killed after step 3 and resumed from the sharded checkpoint of step 2; the model loads."""
    single = _single_process(tmp_path, extended, data)
    config = cpu_config(tmp_path / "fsdp.yaml", 2, "fsdp.yaml")
    out = tmp_path / "fsdp"
    args = _args(out, extended, data, [*_TWO_PROC, "--grad-accum", "2", "--checkpoint-every-steps", "2",
                                       "--eval-every", "2"])
    killed = accelerate_launch(config, args, extra_env={"QIHUANG_FAULT_AT_STEP": "3"})  # both kill -9 after step 3
    assert killed.returncode != 0 and not (out / "done").exists()
    assert list((out / "checkpoints").glob("step-0000002/pytorch_model_fsdp_0/*.distcp"))  # sharded, per process
    run = accelerate_launch(config, args)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["distributed_type"] == "FSDP"
    _assert_matches(single, out, extended, rel=1e-4, atol=1e-4)
    assert_loads(out / "model")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r.get("event") == "warning"]
    assert [r["step"] for r in rows if "bpc" in r and not r.get("final")] == [0, 2]  # before; the killed run at 2
