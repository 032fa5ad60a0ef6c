"""Adapters → standalone models (#6): merge a run's adapters in recorded order (pretrain → sft → dpo, as each stage's
lineage.json names them) with a logits check, write a model card; the `export` command writes GGUF for llama.cpp
(`qihuang.gguf_export`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from qihuang.runs import atomic_path, write_json

STAGE_ORDER = ("pretrain", "sft", "dpo")
PROBE = [[{"role": "user", "content": "何谓阴阳？请引《素问》作答。"}],
         [{"role": "system", "content": "你是中医古籍助手。"}, {"role": "user", "content": "桂枝汤方义如何？"}]]


class MergeError(RuntimeError):
    """A run cannot be merged or exported; the message names the stage or file."""


def probe_logits(model: Any, tokenizer: Any) -> Any:
    """Logits of the model on the PROBE chat prompts (rendered with the tokenizer's template), concatenated."""
    import torch

    from qihuang.template import encode_prompt

    model.eval()
    outs = []
    with torch.no_grad():
        for msgs in PROBE:
            ids = torch.tensor([encode_prompt(tokenizer, msgs)])
            outs.append(model(input_ids=ids, use_cache=False).logits[0].float())
    return torch.cat(outs)


def compare_logits(a: Any, b: Any) -> dict[str, float]:
    """Max abs difference and top-1 (argmax) agreement of two logits tensors of the same shape."""
    return {"max_abs_diff": float((a - b).abs().max()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def _chain(run_dir: Path) -> list[dict[str, Any]]:
    """Stages of the run that produced a model, in pipeline order, with their lineage."""
    chain = []
    for stage in STAGE_ORDER:
        d = run_dir / stage
        lin_file = d / "lineage.json"
        if lin_file.exists():
            lin = json.loads(lin_file.read_text(encoding="utf-8"))
        elif (d / "adapter" / "adapter_config.json").exists():
            cfg = json.loads((d / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
            lin = {"stage": stage, "base": cfg.get("base_model_name_or_path"), "adapter": "adapter", "model": "model"}
        elif (d / "model" / "config.json").exists():
            lin = {"stage": stage, "base": None, "adapter": None, "model": "model"}
        else:
            continue
        lin["dir"] = str(d)
        chain.append(lin)
    if not chain:
        raise MergeError(f"{run_dir}: no stage with a model or adapter ({', '.join(STAGE_ORDER)})")
    return chain


def merge_run(run_dir: Path, out: Path | None = None, atol: float = 1e-3) -> dict[str, Any]:
    """Merge the run's adapters in recorded order onto the first stage's base; check logits after each merge
    (merged vs adapter-on-base) and after reloading the saved directory; write the model and its card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qihuang.models import attach_adapter, prepare_model
    from qihuang.template import DEFAULTS_FILE

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "merged"
    chain = _chain(run_dir)
    first = chain[0]
    start = first["base"] if first.get("adapter") else str(Path(first["dir"]) / first["model"])
    if not start:
        raise MergeError(f"{first['dir']}: lineage names no base model")
    model = AutoModelForCausalLM.from_pretrained(str(prepare_model(str(start))), dtype=torch.float32)
    last = Path(chain[-1]["dir"])
    tok_dir = last / "model" if (last / "model" / "tokenizer_config.json").exists() else last / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    steps: list[dict[str, Any]] = []
    prev_model: str | None = str(start)
    for i, lin in enumerate(chain):
        d = Path(lin["dir"])
        step: dict[str, Any] = {"stage": lin["stage"], "base": lin.get("base"), "method": lin.get("method"),
                                "data": lin.get("data")}
        if i and lin.get("base") and prev_model and Path(lin["base"]).resolve() != Path(prev_model).resolve():
            step["note"] = f"trained on {lin['base']}, applied on top of {prev_model}"
        if lin.get("adapter"):
            peft_model = attach_adapter(model, tokenizer, d / lin["adapter"])
            on_base = probe_logits(peft_model, tokenizer)
            model = peft_model.merge_and_unload()
            step.update(kind="adapter", **compare_logits(on_base, probe_logits(model, tokenizer)))
            step["ok"] = step["max_abs_diff"] <= atol
        else:
            model = AutoModelForCausalLM.from_pretrained(str(d / lin["model"]), dtype=torch.float32)
            step.update(kind="full", ok=True)
        prev_model = str(d / lin.get("model", "model"))
        steps.append(step)
    final = probe_logits(model, tokenizer)
    model.config.use_cache = True
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (tok_dir / DEFAULTS_FILE).exists():
            shutil.copy(tok_dir / DEFAULTS_FILE, tmp / DEFAULTS_FILE)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    check = compare_logits(final, probe_logits(reloaded, tokenizer))
    stage_model = Path(chain[-1]["dir"]) / "model"
    vs_stage = (compare_logits(final, probe_logits(AutoModelForCausalLM.from_pretrained(str(stage_model),
                dtype=torch.float32), tokenizer)) if (stage_model / "config.json").exists() else None)
    report = {"run": str(run_dir), "out": str(out), "base": str(start), "steps": steps, "reload": check,
              "vs_last_stage_model": vs_stage, "atol": atol,
              "verified": all(s["ok"] for s in steps) and check["max_abs_diff"] <= atol}
    write_json(out / "merge_report.json", report)
    (out / "README.md").write_text(model_card(run_dir, report), encoding="utf-8")
    return report


def model_card(run_dir: Path, report: dict[str, Any]) -> str:
    """A Markdown model card: base, data, stages in order, key metrics, logits check, chat template."""
    lines = [f"# qihuang model from run `{run_dir.name}`", "", f"Base model: `{report['base']}`", "",
             "## Stages (applied in this order)", "", "| # | stage | method | data | merge check: max abs logit diff |",
             "|---|---|---|---|---|"]
    for i, s in enumerate(report["steps"], 1):
        data = ", ".join(Path(p).name for p in s.get("data") or []) or "-"
        diff = f"{s['max_abs_diff']:.2e}" if "max_abs_diff" in s else "full weights"
        lines.append(f"| {i} | {s['stage']} | {s.get('method') or s.get('kind')} | {data} | {diff} |")
    lines += [f"\nNote ({s['stage']}): {s['note']}." for s in report["steps"] if s.get("note")]
    lines += ["", "## Metrics", ""]
    keys = ("train_loss_before", "train_loss_after", "val_loss_before", "val_loss_after", "qa_rouge_l_before",
            "qa_rouge_l_after", "reward_accuracy_before", "reward_accuracy_after", "reward_margin_after",
            "logp_accuracy_before", "logp_accuracy_after", "tokens_per_s")
    for s in report["steps"]:
        summ_file = run_dir / s["stage"] / "summary.json"
        summ = json.loads(summ_file.read_text(encoding="utf-8")) if summ_file.exists() else {}
        vals = [f"{k}={summ[k]}" for k in keys if summ.get(k) is not None]
        lines.append(f"- **{s['stage']}**: " + (", ".join(vals) or "no summary"))
    ok = all(s["ok"] for s in report["steps"])
    lines += ["", "## Checks", "", f"- merged vs adapter-on-base, every stage within {report['atol']}: {ok}",
              f"- saved model reloaded: max abs logit diff {report['reload']['max_abs_diff']:.2e}; "
              f"verified: {report['verified']}",
              "", "## Chat template", "",
              "The base model's own chat template (in `tokenizer_config.json` / `chat_template.jinja`) was used for "
              "training; build serving prompts with `qihuang.template.render_prompt` so they match byte for byte.", ""]
    return "\n".join(lines)


def _resolve_model_dir(path: Path) -> Path:
    """A model folder as given, a stage folder's `model/`, or a run's final model (`RunDir.final_model`, the one
    `qihuang serve` picks too)."""
    from qihuang.models import ModelError
    from qihuang.runs import RunDir

    for cand in (path, path / "model"):
        if (cand / "config.json").exists():
            return cand
    try:
        return RunDir(path).final_model()
    except ModelError as exc:
        raise MergeError(str(exc)) from None


@click.command("merge")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output dir (default RUN_DIR/merged).")
@click.option("--atol", type=float, default=1e-3, show_default=True, help="Max |Δlogit| merged vs adapter-on-base.")
def merge_cli(run_dir: Path, out: Path | None, atol: float) -> None:
    """Merge a run's adapters (pretrain → sft → dpo) into one standalone HF model with a model card."""
    report = merge_run(run_dir, out, atol)
    for s in report["steps"]:
        click.echo(f"{s['stage']}: {s.get('kind')} max|Δlogit|={s.get('max_abs_diff', 0):.2e}")
    click.echo(f"merged → {report['out']} (verified: {report['verified']})")
    if not report["verified"]:
        raise SystemExit(1)


@click.command("export")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--gguf", "gguf_out", type=str, default=None, is_flag=False, flag_value="",
              help="Write a GGUF (optionally to this file; default PATH/model-<outtype>.gguf).")
@click.option("--outtype", type=click.Choice(["f32", "f16"]), default="f16", show_default=True)
@click.option("--verify/--no-verify", default=True, help="Read back with GGUFReader and transformers.")
def export_cli(path: Path, gguf_out: str | None, outtype: str, verify: bool) -> None:
    """Export a model directory or run (merged/, dpo/model, sft/model) to GGUF for llama.cpp."""
    if gguf_out is None:
        raise click.UsageError("choose a format: --gguf [FILE]")
    from qihuang.gguf_export import export_gguf, verify_gguf

    model_dir = _resolve_model_dir(path)
    target = Path(gguf_out) if gguf_out else model_dir / f"model-{outtype}.gguf"
    info = export_gguf(model_dir, target, outtype)
    click.echo(f"wrote {target} ({info['tensors']} tensors, {info['bytes'] / 1e6:.1f} MB, "
               f"tokenizer {info['tokenizer_model']}/{info['tokenizer_pre']} from {info['vocab_source']})")
    if verify:
        check = verify_gguf(model_dir, target)
        click.echo(f"verify: {json.dumps(check)}")
        if not check["ok"]:
            raise SystemExit(1)
