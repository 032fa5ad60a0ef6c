"""SFT data: read dialogue files (JSON or JSONL in any shape `qihuang.template.to_messages` knows), validate, encode
with the chat template, mix by ratio, order by curriculum, pack and batch, and list every reject with its reason."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qihuang.template import IGNORE_INDEX, Message, TemplateError, encode_dialogue, to_messages


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (index, record or None, error) from a JSON array/object file or a JSONL file; never raises on a bad
    line (the error names it)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield 0, None, f"bad_json: {exc.msg} at line {exc.lineno}"
            return
        items = data if isinstance(data, list) else [data]
        for i, rec in enumerate(items):
            yield (i, rec, "") if isinstance(rec, dict) else (i, None, "bad_record: not an object")
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield i, None, f"bad_json: {exc.msg}"
            continue
        yield (i, rec, "") if isinstance(rec, dict) else (i, None, "bad_record: not an object")


@dataclass
class Example:
    """One encoded dialogue ready for training."""

    input_ids: list[int]
    labels: list[int]
    source: str
    index: int
    difficulty: float | None = None
    messages: list[Message] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "labels": self.labels}


@dataclass
class LoadReport:
    """What happened to the input: kept/rejected/truncated counts per file and reason, and the reject records."""

    kept: Counter[str] = field(default_factory=Counter)
    truncated: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, source: str, index: int, reason: str, detail: str = "") -> None:
        tag = reason.split(":")[0]
        self.reasons[tag] += 1
        self.rejects.append({"source": source, "index": index, "reason": tag, "detail": detail or reason})

    def summary(self) -> dict[str, Any]:
        return {"kept": dict(self.kept), "truncated": dict(self.truncated), "rejected": dict(self.reasons),
                "n_kept": sum(self.kept.values()), "n_rejected": sum(self.reasons.values()),
                "n_truncated": sum(self.truncated.values())}


def _difficulty(record: dict[str, Any]) -> float | None:
    meta = record.get("meta")
    value = meta.get("difficulty") if isinstance(meta, dict) else record.get("difficulty")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_examples(path: Path, tokenizer: Any, max_length: int, last_turn_only: bool = False,
                  system: str | None = None, report: LoadReport | None = None, limit: int | None = None,
                  seed: int = 0) -> list[Example]:
    """Encode the valid dialogues of one file; bad ones go to `report` (rules in `template.encode_dialogue`).
    With `limit`, records are visited in a seeded random order until `limit` are kept (only those visited are
    checked and counted), so a small sample of a big file is cheap."""
    report = report if report is not None else LoadReport()
    source = str(path)
    out: list[Example] = []
    records = list(read_records(Path(path)))
    if limit is not None:
        random.Random(seed).shuffle(records)
    for index, rec, error in records:
        if limit is not None and len(out) >= limit:
            break
        if rec is None:
            report.reject(source, index, error)
            continue
        try:
            msgs = to_messages(rec, system=system)
            enc = encode_dialogue(tokenizer, msgs, max_length=max_length, last_turn_only=last_turn_only)
        except TemplateError as exc:
            report.reject(source, index, exc.reason, str(exc))
            continue
        if enc.n_label_tokens == 0:
            report.reject(source, index, "no_label_tokens")
            continue
        if enc.truncated:
            report.truncated[source] += 1
        report.kept[source] += 1
        out.append(Example(enc.input_ids, enc.labels, source, index, _difficulty(rec), msgs))
    return out


def mix(sources: Sequence[list[Example]], ratios: Sequence[float] | None, total: int | None,
        seed: int = 0) -> list[Example]:
    """Mix sources by ratio: source i contributes round(total * r_i / sum(r)) examples (sampled without
    replacement, repeated when it has fewer). `total` defaults to the sum of the sources' sizes."""
    if not ratios:
        ratios = [float(len(s)) for s in sources]
    rng = random.Random(seed)
    total = total or sum(len(s) for s in sources)
    weight = sum(ratios) or 1.0
    mixed: list[Example] = []
    for src, r in zip(sources, ratios):
        want = round(total * r / weight)
        if not src or want <= 0:
            continue
        pool = list(src)
        rng.shuffle(pool)
        mixed += (pool * (want // len(pool) + 1))[:want]
    rng.shuffle(mixed)
    return mixed


def curriculum(examples: list[Example], stages: int, seed: int = 0) -> list[Example]:
    """Order examples easy → hard in `stages` buckets of `difficulty` (shuffled inside each bucket); examples
    without a score count as the easiest. stages <= 1 leaves the order unchanged."""
    if stages <= 1:
        return examples
    rng = random.Random(seed)
    ranked = sorted(examples, key=lambda e: -1.0 if e.difficulty is None else e.difficulty)
    size = -(-len(ranked) // stages) if ranked else 1
    ordered: list[Example] = []
    for k in range(0, len(ranked), size):
        bucket = ranked[k: k + size]
        rng.shuffle(bucket)
        ordered += bucket
    return ordered


def split_validation(examples: list[Example], fraction: float, seed: int = 0,
                     minimum: int = 1) -> tuple[list[Example], list[Example]]:
    """(train, validation): a random `fraction` (at least `minimum`, at most half) held out."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    idx = list(range(len(examples)))
    random.Random(seed + 1).shuffle(idx)
    n_val = min(max(minimum, round(len(examples) * fraction)), len(examples) // 2)
    val_idx = set(idx[:n_val])
    return [e for i, e in enumerate(examples) if i not in val_idx], [examples[i] for i in sorted(val_idx)]


def label_tokens(examples: Sequence[Example]) -> int:
    """Number of tokens that carry loss."""
    return sum(sum(1 for x in e.labels if x != IGNORE_INDEX) for e in examples)


def to_dataset(examples: list[Example], packing: bool, max_length: int, stages: int) -> Any:
    """A datasets.Dataset of input_ids/labels; packed (best-fit decreasing, `seq_lengths` per row) within each
    curriculum stage so packing does not undo the easy → hard order."""
    from datasets import Dataset, concatenate_datasets
    from trl.data_utils import pack_dataset

    ds = Dataset.from_list([e.row() for e in examples])
    if not packing:
        return ds
    n_chunks = max(1, stages)
    size = math.ceil(len(examples) / n_chunks)
    parts = [pack_dataset(ds.select(range(i, min(i + size, len(ds)))), max_length, "bfd")
             for i in range(0, len(ds), size)]
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


class PackedCollator:
    """Right-pads rows into a batch. Packed rows (with `seq_lengths`) get position ids restarting at each dialogue
    and no attention mask, so transformers builds a block-diagonal causal mask (no attention across dialogues);
    plain rows get an attention mask. Records the real (non-padding) tokens of each batch in `batch_tokens` while
    `counting` (the data loader may collate one batch ahead, so count only the batches actually trained on; the
    trainer turns counting off while it evaluates)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.batch_tokens: list[int] = []
        self.counting = True

    @property
    def tokens(self) -> int:
        return sum(self.batch_tokens)

    def trained_tokens(self, micro_batches: int) -> int:
        """Real tokens in the first `micro_batches` batches collated since the last reset."""
        return sum(self.batch_tokens[:micro_batches])

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        packed = "seq_lengths" in examples[0]
        extra = torch.zeros((len(examples), width), dtype=torch.long)
        if self.counting:
            self.batch_tokens.append(sum(len(e["input_ids"]) for e in examples))
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            if packed:
                extra[i, :n] = torch.cat([torch.arange(k) for k in e["seq_lengths"]])
                starts = torch.tensor([0, *e["seq_lengths"]]).cumsum(0)[:-1]
                labels[i, starts] = IGNORE_INDEX  # first token of a dialogue has no in-dialogue context
            else:
                extra[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "position_ids" if packed else "attention_mask": extra}
