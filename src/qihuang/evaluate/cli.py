"""`qihuang eval ...` commands: bpc, mcq, qa on one model; compare across models, run stages or earlier results.

A MODEL is a preset name, a Hugging Face model directory, a run stage directory (`runs/x/sft` → its `model/`).
`compare` also takes a whole run directory (base + cpt/sft/dpo) or an earlier `results.json` / eval folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from qihuang.cliutil import config_options
from qihuang.config import ConfigError
from qihuang.evaluate import EvalConfig

STAGE_LABELS = (("pretrain", "cpt"), ("sft", "sft"), ("dpo", "dpo"))


def resolve_model(spec: str) -> Path:
    """A model spec → HF directory: stage dir → its `model/`, else `prepare_model` (preset, HF dir, .gguf)."""
    from qihuang.models import prepare_model

    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and (path / "model" / "config.json").exists():
        return path / "model"
    return prepare_model(spec)


def run_models(run_dir: Path) -> dict[str, Path]:
    """Models of a finished run: base (from recipe.json) then cpt / sft / dpo where their stage wrote a model."""
    recipe = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    models = {"base": resolve_model(str(recipe.get("model", "smollm2-135m")))}
    for stage, label in STAGE_LABELS:
        if (run_dir / stage / "model" / "config.json").exists():
            models[label] = run_dir / stage / "model"
    return models


def _run_file(path: Path | None, run_dir: Path | None, rel: str) -> Path | None:
    if path is not None:
        return path
    if run_dir is not None and (run_dir / rel).exists():
        return run_dir / rel
    return None


def _run_of(spec: str) -> Path | None:
    """The run directory a model spec sits in (`runs/x/sft` → `runs/x`), if any."""
    p = Path(spec).expanduser()
    for cand in (p, p.parent, p.parent.parent):
        if (cand / "recipe.json").exists() or (cand / "corpus" / "heldout.jsonl").exists():
            return cand
    return None


def _evaluate(cfg: EvalConfig, models: dict[str, Path], heldout: Path | None, heldout_qa: Path | None,
              out: Path, index: Path | None = None) -> dict[str, Any]:
    from qihuang.evaluate import evaluate_models
    from qihuang.runs import StageDir, run_stage

    stage = StageDir(out)
    return run_stage(stage, cfg, lambda: evaluate_models(cfg, models, heldout, heldout_qa, stage, index),
                     force=True)


def _run_index(index: Path | None, run_dir: Path | None) -> Path | None:
    """The retrieval index's passages: the given file, else the run's library when it has one."""
    if index is not None or run_dir is None:
        return index
    from qihuang.retrieval import resolve_passages

    try:
        resolve_passages(run_dir)
    except ConfigError:
        return None
    return run_dir


def _show(out: Path) -> None:
    click.echo((out / "report.md").read_text(encoding="utf-8"))
    click.echo(f"written: {out}/results.json, report.md, charts")


@click.group("eval")
def eval_cli() -> None:
    """Evaluation: bpc, mcq, qa, compare; paired (two answer files side by side)."""


@eval_cli.command("bpc")
@click.argument("model")
@click.option("--heldout", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Held-out passages JSONL (default: the run's corpus/heldout.jsonl when MODEL is in a run).")
@config_options(EvalConfig)
def bpc_cmd(model: str, heldout: Path | None, cfg: EvalConfig) -> None:
    """Bits per character of MODEL on held-out passages (tokenizer-independent)."""
    from qihuang.evaluate.bpc import evaluate_bpc
    from qihuang.models import load_model

    heldout = _run_file(heldout, _run_of(model), "corpus/heldout.jsonl")
    if heldout is None:
        raise click.UsageError("no held-out passages: pass --heldout FILE.jsonl")
    m, tok = load_model(str(resolve_model(model)))
    m.eval()
    r = evaluate_bpc(m, tok, heldout, cfg.bpc_max_chars, cfg.bpc_window, cfg.bpc_stride)
    click.echo(json.dumps({k: v for k, v in r.items() if k != "by_book"}, ensure_ascii=False))
    click.echo(f"bpc {r['bpc']:.4f} on {r['chars']:,} characters of {heldout}")


@eval_cli.command("mcq")
@click.argument("model")
@click.argument("files", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write results.json / report.md / charts here.")
@config_options(EvalConfig)
def mcq_cmd(model: str, files: tuple[str, ...], out: Path | None, cfg: EvalConfig) -> None:
    """Multiple-choice accuracy of MODEL on FILES (default: --mcq-files); `file:N` scores the first N rows."""
    cfg = dataclasses.replace(cfg, mcq_files=list(files) or cfg.mcq_files, qa_files=[], bpc_max_chars=0)
    if out is not None:
        _evaluate(cfg, {Path(model).name or model: resolve_model(model)}, None, None, out)
        _show(out)
        return
    from qihuang.evaluate.mcq import evaluate_mcq_set
    from qihuang.evaluate.mcq_formats import load_mcq
    from qihuang.evaluate.runner import fewshot_examples, parse_spec
    from qihuang.models import load_model

    m, tok = load_model(str(resolve_model(model)))
    m.eval()
    for spec in cfg.mcq_files:
        path, limit = parse_spec(spec, cfg.mcq_limit)
        s, _ = evaluate_mcq_set(m, tok, load_mcq(path, limit), examples=fewshot_examples(cfg, path),
                                scoring=cfg.mcq_scoring, metric=cfg.metric, formulation=cfg.mcq_formulation,
                                gen_max_new_tokens=cfg.mcq_gen_tokens,
                                n_boot=cfg.bootstrap, seed=cfg.seed, batch_size=cfg.mcq_batch_size)
        variants = " ".join(f"{k}={100 * v:.1f}" for k, v in s["variants"].items())
        click.echo(f"{path}: acc {100 * s['accuracy']:.1f}% [{100 * s['ci95'][0]:.1f}, {100 * s['ci95'][1]:.1f}] "
                   f"({s['metric']}, n={s['n']}, chance {100 * s['chance']:.1f}%, skipped {s['skipped']}"
                   f"{' rows ' + ','.join(map(str, s['skipped_rows'][:20])) if s['skipped'] else ''}; {variants}; "
                   f"{s['questions_per_s']:.2f} q/s)")


@eval_cli.command("qa")
@click.argument("model")
@click.argument("files", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write results.json / report.md / charts here.")
@config_options(EvalConfig)
def qa_cmd(model: str, files: tuple[str, ...], out: Path | None, cfg: EvalConfig) -> None:
    """Open-QA scores of MODEL on FILES (default: the run's instruct/heldout_qa.jsonl, then --qa-files)."""
    held_qa = _run_file(None, _run_of(model), "instruct/heldout_qa.jsonl") if not files else None
    cfg = dataclasses.replace(cfg, qa_files=list(files) or cfg.qa_files, mcq_files=[], bpc_max_chars=0)
    if not cfg.qa_files and held_qa is None:
        raise click.UsageError("no QA file: pass FILES (JSONL question/reference[/source], or CMB-Clin JSON)")
    if out is not None:
        _evaluate(cfg, {Path(model).name or model: resolve_model(model)}, None, held_qa, out)
        _show(out)
        return
    from qihuang.evaluate.qa import evaluate_qa_set, load_qa
    from qihuang.evaluate.runner import parse_spec
    from qihuang.models import load_model

    from qihuang.template import chat_defaults

    model_dir = resolve_model(model)
    m, tok = load_model(str(model_dir))
    m.eval()
    specs = [(held_qa, cfg.qa_limit)] if held_qa else []
    specs += [parse_spec(f, cfg.qa_limit) for f in cfg.qa_files]
    for path, limit in specs:
        s, _ = evaluate_qa_set(m, tok, load_qa(path, limit), cfg.qa_max_new_tokens, defaults=chat_defaults(model_dir),
                               batch_size=cfg.qa_batch_size, batch_tokens=cfg.qa_batch_tokens)
        faith = "–" if s["faithfulness"] is None else f"{100 * s['faithfulness']:.1f}%"
        click.echo(f"{path}: ROUGE-L {100 * s['rouge_l']:.1f}%, BLEU-4 {s['bleu4']:.1f}, length {s['length']:.0f} "
                   f"chars, faithfulness {faith} (n={s['n']}, skipped {s['skipped']})")


@eval_cli.command("compare")
@click.argument("specs", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for results.json, report.md, "
              "charts (and per-model caches: rerunning resumes).")
@click.option("--heldout", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Held-out passages for bpc (default: from the run the models come from).")
@click.option("--heldout-qa", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Held-out QA JSONL (default: the run's instruct/heldout_qa.jsonl).")
@click.option("--index", type=click.Path(path_type=Path, exists=True), default=None,
              help="Passages file or run dir for the retrieval rows (default: the run the models come from).")
@config_options(EvalConfig)
def compare_cmd(specs: tuple[str, ...], out: Path, heldout: Path | None, heldout_qa: Path | None,
                index: Path | None, cfg: EvalConfig) -> None:
    """One report across models: SPECS are `[LABEL=]MODEL`, a run directory (base, cpt, sft, dpo), or earlier
    results (`results.json` or an eval folder: merged without rerunning)."""
    from qihuang.evaluate.compare import merge_results, write_outputs

    models: dict[str, Path] = {}
    earlier: list[tuple[str | None, Path]] = []
    run_dir: Path | None = None
    for spec in specs:
        label, sep, target = spec.partition("=")
        label, target = (label, target) if sep else ("", spec)
        p = Path(target).expanduser()
        if p.name == "results.json" or (p / "results.json").exists():
            earlier.append((label or None, p))
        elif (p / "recipe.json").exists() and not label:
            models.update(run_models(p))
            run_dir = run_dir or p
        else:
            key = label or (p.name if p.name != "model" else p.parent.name) or target
            if key in models:
                raise click.UsageError(f"label {key!r} given twice; use LABEL=MODEL")
            models[key] = resolve_model(target)
            run_dir = run_dir or _run_of(target)
    if earlier and models:
        raise click.UsageError("give either models to evaluate or earlier results to merge, not both")
    if earlier:
        results, files = merge_results(earlier)
        write_outputs(out, results, files)
        _show(out)
        return
    heldout = _run_file(heldout, run_dir, "corpus/heldout.jsonl")
    heldout_qa = _run_file(heldout_qa, run_dir, "instruct/heldout_qa.jsonl")
    _evaluate(cfg, models, heldout, heldout_qa, out, _run_index(index, run_dir))
    _show(out)


@eval_cli.command("paired")
@click.argument("a", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("b", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--labels", default="A,B", show_default=True, help="Names of the two in the tables: `A,B`.")
@click.option("--n-boot", type=click.IntRange(100, 100000), default=1000, show_default=True,
              help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the comparison as JSON here.")
def paired_cmd(a: Path, b: Path, labels: str, n_boot: int, seed: int, out: Path | None) -> None:
    """B − A on the same questions: two answer files an eval wrote (`OUT/predictions/<label>__rows__<condition>.jsonl`,
    e.g. an ablation's final row and the run's own), every per-answer metric and ROUGE-L / faithfulness by question
    type, each with its paired 95% bootstrap interval."""
    from qihuang.evaluate.paired import check_aligned, load_predictions, markdown, paired
    from qihuang.runs import write_json

    names = [x.strip() for x in labels.split(",")]
    if len(names) != 2 or not all(names):
        raise click.BadParameter("give two names: `A,B`", param_hint="--labels")
    rows_a, rows_b = load_predictions(a), load_predictions(b)
    check_aligned(rows_a, rows_b, str(a), str(b))
    result = paired(rows_a, rows_b, n_boot, seed)
    click.echo(markdown(result, names[0], names[1]), nl=False)
    if out is not None:
        write_json(out, {"a": str(a), "b": str(b), "labels": names, **result})
        click.echo(f"written: {out}")
