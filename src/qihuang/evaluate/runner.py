"""Run the evaluation of several labelled models: bpc, MCQ files, QA files, the held-out-book QA rows (closed-book /
with retrieval); cache each finished part so a killed stage resumes; then paired comparisons against the first model
and the report (results.json, report.md, charts)."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qihuang.config import data_file
from qihuang.evaluate.mcq_formats import EvalDataError, MCQItem, load_mcq
from qihuang.runs import MetricsLog, StageDir, write_json, write_jsonl

if TYPE_CHECKING:
    from qihuang.evaluate import EvalConfig
    from qihuang.evaluate.rows import Plan

HELDOUT_QA_FILE = "heldout_books_qa.jsonl"
"""The held-out-book QA set, written into the eval stage folder."""
QA_PART_VERSION = 2
"""Bumped when the scoring of QA files changes, so cached QA parts are recomputed."""


def parse_spec(spec: str, default_limit: int) -> tuple[Path, int]:
    """`path[:N]` → (resolved path, row limit); a relative path that does not exist is looked up in shared data."""
    limit = default_limit
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and head:
        spec, limit = head, int(tail)
    path = Path(spec).expanduser()
    if not path.exists():
        path = data_file(spec)
    return path, limit


def fewshot_examples(cfg: EvalConfig, eval_file: Path) -> list[MCQItem]:
    """The first `mcq_shots` valid items of the named dev file (for a folder: the file named like `eval_file`)."""
    if not cfg.mcq_shots:
        return []
    assert cfg.mcq_fewshot_file is not None
    path, _ = parse_spec(cfg.mcq_fewshot_file, 0)
    if path.is_dir():
        cands = [p for p in path.iterdir() if p.stem == eval_file.stem]
        if not cands:
            raise EvalDataError(f"{path}: no dev file named like {eval_file.name} for few-shot examples")
        path = cands[0]
    if path.resolve() == eval_file.resolve():
        raise EvalDataError(f"{path}: few-shot file is the evaluated file")
    items = load_mcq(path).items
    if len(items) < cfg.mcq_shots:
        raise EvalDataError(f"{path}: {len(items)} valid rows, fewer than mcq_shots={cfg.mcq_shots}")
    return items[: cfg.mcq_shots]


def _stat(path: Path | None) -> str | None:
    """Path plus size and mtime: changes when the file is rewritten."""
    if path is None or not Path(path).exists():
        return None
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _content(path: Path | None) -> str | None:
    """Size and SHA-256 of a data file: the cache key of what was measured on it (the data folder is re-provisioned
    with new mtimes, and a checkout elsewhere has other paths: neither is a reason to measure again). Each file is
    read once per process while it is unchanged (every model's parts ask for the same files)."""
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return _hashed(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _hashed(path: str, size: int, mtime_ns: int) -> str:
    from qihuang.runs import sha256_file

    return f"{size}:{sha256_file(Path(path))}"


def _model_fingerprint(model_dir: Path) -> list[str | None]:
    files = [Path(model_dir) / "config.json", *sorted(Path(model_dir).glob("*.safetensors"))]
    return [str(Path(model_dir).resolve()), *(_stat(f) for f in files)]


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class Parts:
    """Per-model cache of finished measurements (bpc, each MCQ file, each QA file) under out/parts/<label>/, keyed
    by the model's files and the settings that matter: a killed stage resumes at the next unfinished part."""

    def __init__(self, root: Path, model_dir: Path, log: MetricsLog, label: str) -> None:
        self.root, self.log, self.label = root, log, label
        self.model_fp = _model_fingerprint(model_dir)
        self.computed = 0

    def get(self, kind: str, key: str, params: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> Any:
        path = self.root / f"{kind}__{safe_name(key)}.json"
        fp = hashlib.sha256(json.dumps([self.model_fp, params], sort_keys=True, default=str).encode()).hexdigest()
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("fingerprint") == fp:
                self.log.log(event="part_reused", label=self.label, part=f"{kind}:{key}")
                return saved["value"]
        value = compute()
        self.computed += 1
        write_json(path, {"fingerprint": fp, "value": value})
        return value


def evaluate_model(cfg: EvalConfig, label: str, model_dir: Path, heldout: Path | None, heldout_qa: Path | None,
                   out_dir: Path, log: MetricsLog, plan: Plan) -> dict[str, Any]:
    """All measurements for one model (finished parts reused); per-item predictions go to out_dir/predictions/."""
    from qihuang.evaluate.bpc import evaluate_bpc
    from qihuang.evaluate.mcq import evaluate_mcq_set
    from qihuang.evaluate.rows import model_rows
    from qihuang.models import load_model
    from qihuang.template import chat_defaults

    t0 = time.time()
    defaults = chat_defaults(model_dir)
    loaded: list[Any] = []

    def model() -> tuple[Any, Any]:
        if not loaded:
            log.log(event="model_load", label=label, model=str(model_dir))
            m, tok = load_model(str(model_dir))
            m.eval()
            loaded.extend([m, tok])
        return loaded[0], loaded[1]

    parts = Parts(out_dir / "parts" / safe_name(label), model_dir, log, label)
    result: dict[str, Any] = {"model": str(model_dir), "bpc": None, "mcq": {}, "qa": {}, "rows": {}}
    correct: dict[str, list[bool]] = {}
    if heldout is not None and cfg.bpc_max_chars and label in plan.bpc_labels:
        def bpc() -> dict[str, Any]:
            r = evaluate_bpc(*model(), heldout, cfg.bpc_max_chars, cfg.bpc_window, cfg.bpc_stride)
            log.log(event="bpc", label=label, bpc=r["bpc"], chars=r["chars"])
            return r

        result["bpc"] = parts.get("bpc", "heldout", {"file": _content(heldout), "chars": cfg.bpc_max_chars,
                                                      "window": cfg.bpc_window, "stride": cfg.bpc_stride}, bpc)
    for spec in cfg.mcq_files if label in plan.mcq_labels else []:
        path, limit = parse_spec(spec, cfg.mcq_limit)
        key = _file_key(path)

        def mcq(path: Path = path, limit: int = limit, key: str = key) -> dict[str, Any]:
            summary, preds = evaluate_mcq_set(
                *model(), load_mcq(path, limit), examples=fewshot_examples(cfg, path), scoring=cfg.mcq_scoring,
                metric=cfg.metric, formulation=cfg.mcq_formulation, gen_max_new_tokens=cfg.mcq_gen_tokens,
                n_boot=cfg.bootstrap, seed=cfg.seed, batch_size=cfg.mcq_batch_size,
                progress=progress_logger(log, label, key))
            summary["file"] = str(path)
            write_jsonl(out_dir / "predictions" / f"{safe_name(label)}__mcq__{safe_name(key)}.jsonl", preds)
            log.log(event="mcq", label=label, file=key, accuracy=summary["accuracy"], n=summary["n"],
                    skipped=summary["skipped"], questions_per_s=round(summary["questions_per_s"], 3))
            return {"summary": summary, "correct": [p["pred"][summary["metric"]] == p["answer"] for p in preds]}

        params = {"file": _content(path), "limit": limit, "shots": cfg.mcq_shots, "fewshot": cfg.mcq_fewshot_file,
                  "scoring": cfg.mcq_scoring, "metric": cfg.metric,
                  "formulation": cfg.mcq_formulation, "gen": cfg.mcq_gen_tokens,
                  "bootstrap": cfg.bootstrap, "seed": cfg.seed}
        done = parts.get("mcq", key, params, mcq)
        result["mcq"][key], correct[key] = done["summary"], done["correct"]
    _qa_files(cfg, label, heldout_qa, model, defaults, parts, result, out_dir, log)
    vectors = model_rows(cfg, label, plan, model, defaults, parts, result, out_dir, log)
    if not parts.computed:
        log.log(event="model_reused", label=label)
    result["seconds"] = round(time.time() - t0, 2)
    return {"result": result, "correct": correct, "vectors": vectors}


def _qa_files(cfg: EvalConfig, label: str, heldout_qa: Path | None, model: Callable[[], tuple[Any, Any]],
              defaults: dict[str, Any], parts: Parts, result: dict[str, Any], out_dir: Path,
              log: MetricsLog) -> None:
    """The extra QA files (the instruct stage's held-out QA, qa_files), closed-book, into result["qa"]."""
    from qihuang.evaluate.qa import evaluate_qa_set, load_qa

    qa_specs: list[tuple[str, Path, int]] = []
    if heldout_qa is not None and Path(heldout_qa).exists():
        qa_specs.append(("heldout_qa", Path(heldout_qa), cfg.qa_limit))
    for spec in cfg.qa_files:
        path, limit = parse_spec(spec, cfg.qa_limit)
        qa_specs.append((_file_key(path), path, limit))
    for key, path, limit in qa_specs:
        def qa(key: str = key, path: Path = path, limit: int = limit) -> dict[str, Any]:
            summary, per = evaluate_qa_set(*model(), load_qa(path, limit), cfg.qa_max_new_tokens,
                                           progress=progress_logger(log, label, key), defaults=defaults,
                                           batch_size=cfg.qa_batch_size, batch_tokens=cfg.qa_batch_tokens)
            summary["file"] = str(path)
            write_jsonl(out_dir / "predictions" / f"{safe_name(label)}__qa__{safe_name(key)}.jsonl", per)
            log.log(event="qa", label=label, file=key, rouge_l=summary["rouge_l"],
                    faithfulness=summary["faithfulness"])
            return summary

        result["qa"][key] = parts.get("qa", key, {"file": _content(path), "limit": limit, "defaults": defaults,
                                                  "tokens": cfg.qa_max_new_tokens, "v": QA_PART_VERSION}, qa)


def progress_logger(log: MetricsLog, label: str, key: str, every_s: float = 30.0) -> Callable[[int, int], None]:
    """A progress callback: a terminal bar (items/s, ETA; `qihuang.progress`) and `done/total` in metrics.jsonl at
    most every `every_s` seconds."""
    from qihuang.progress import bar

    last = [time.time()]
    shown: list[Any] = []

    def report(done: int, total: int) -> None:
        if not shown:
            shown.append(bar(total, f"eval {label} {key}", "item"))
        shown[0].update(done - shown[0].n)
        if done >= total:
            shown[0].close()
        if time.time() - last[0] >= every_s or done == total:
            last[0] = time.time()
            log.log(event="progress", label=label, file=key, done=done, total=total)

    return report


def _file_key(path: Path) -> str:
    """A short, stable name for an eval file: its path under the shared `eval/` folder when it lies there
    (`cmmlu/test/anatomy.csv`), else `<parent>/<name>`."""
    path = Path(path).resolve()
    parts = path.parts
    if "eval" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("eval")
        if i < len(parts) - 1:
            return "/".join(parts[i + 1:])
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def add_paired(results: dict[str, Any], correct: dict[str, dict[str, list[bool]]], n_boot: int, seed: int) -> None:
    """For every model after the first, its MCQ accuracy difference to the first on the same items (paired
    bootstrap CI), stored as `mcq[file]["vs_<first>"]`."""
    from qihuang.evaluate.stats import paired_diff

    labels = list(results)
    if len(labels) < 2:
        return
    base = labels[0]
    for label in labels[1:]:
        for key, ok in correct.get(label, {}).items():
            d = paired_diff(correct.get(base, {}).get(key), ok, n_boot, seed)
            if d is not None:
                results[label]["mcq"][key][f"vs_{base}"] = d


def run_all(cfg: EvalConfig, models: dict[str, Path], heldout: Path | None, heldout_qa: Path | None,
            out: StageDir, index: Path | None = None) -> dict[str, Any]:
    """Evaluate every model (reusing cached parts) and write the report; returns the stage summary."""
    from qihuang.evaluate.compare import write_outputs
    from qihuang.evaluate.rows import finish_rows, make_plan

    if not models:
        raise EvalDataError("no model to evaluate")
    if heldout is not None and not Path(heldout).exists():
        raise FileNotFoundError(f"{heldout}: held-out passages not found (run the corpus stage, or pass none)")
    log = out.metrics()
    plan = make_plan(cfg, list(models), heldout, index, out.path, log)
    results: dict[str, Any] = {}
    correct: dict[str, dict[str, list[bool]]] = {}
    vectors: dict[tuple[str, str], dict[str, Any]] = {}
    for label, model_dir in models.items():
        log.log(event="model_start", label=label, model=str(model_dir))
        done = evaluate_model(cfg, label, Path(model_dir), heldout, heldout_qa, out.path, log, plan)
        results[label], correct[label] = done["result"], done["correct"]
        vectors.update(done["vectors"])
    add_paired(results, correct, cfg.bootstrap, cfg.seed)
    rows = finish_rows(results, plan, vectors, list(models)[0], cfg)
    files = {"heldout": str(heldout) if heldout else None, "heldout_qa": str(heldout_qa) if heldout_qa else None,
             "heldout_books_qa": str(out.path / HELDOUT_QA_FILE) if plan.qa_items else None,
             "index": str(plan.index.source) if plan.index is not None else None,
             "index_training_only": plan.index_training_only,
             "mcq": sorted({m["file"] for r in results.values() for m in r["mcq"].values()}),
             "qa": sorted({q["file"] for r in results.values() for q in r["qa"].values()})}
    write_outputs(out.path, results, files, cfg, rows)
    log.close()
    return summarize(results)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Compact stage summary: per model bpc, each MCQ accuracy and each QA ROUGE-L / faithfulness."""
    out: dict[str, Any] = {}
    for label, r in results.items():
        out[label] = {
            "bpc": round(r["bpc"]["bpc"], 4) if r.get("bpc") else None,
            "mcq": {k: round(v["accuracy"], 4) for k, v in r["mcq"].items()},
            "qa": {k: {"rouge_l": round(v["rouge_l"], 4),
                       "faithfulness": None if v["faithfulness"] is None else round(v["faithfulness"], 4)}
                   for k, v in r["qa"].items()},
            "rows": {c: {"rouge_l": round(v["rouge_l"], 4), "citation_book": _r4(v["citation_book"]),
                         "degenerate": round(v["degenerate"], 4), "declined": round(v["declined"], 4)}
                     for c, v in r.get("rows", {}).items()},
        }
    return {"models": out, "report": "report.md", "results": "results.json"}


def _r4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
