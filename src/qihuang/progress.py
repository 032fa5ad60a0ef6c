"""Terminal progress bars for long stages (tqdm on stderr: rate and ETA), quiet when stderr is not a terminal
(logs, CI); `QIHUANG_PROGRESS=1` forces them on, `0` off. Figures also go to each stage's metrics.jsonl."""

from __future__ import annotations

import os
import sys
from typing import Any


def enabled() -> bool:
    """Whether bars are drawn: QIHUANG_PROGRESS=1/0 if set, else whether stderr is a terminal."""
    forced = os.environ.get("QIHUANG_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(total: int | None, desc: str, unit: str, initial: int = 0) -> Any:
    """A tqdm bar (a silent one when `enabled()` is false); `update`, `set_postfix`, `close` as usual."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled(), dynamic_ncols=True,
                file=sys.stderr, leave=True, mininterval=0.5)
