"""`qihuang corpus fetch`: download the public corpus from its upstream URL into $QIHUANG_DATA, file by file,
resuming partial downloads (HTTP Range) and verifying each file against a SHA-256 manifest."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from qihuang.runs import sha256_file

MANIFEST_NAME = "MANIFEST.sha256"
CHUNK = 1 << 16


class FetchError(RuntimeError):
    """A download that cannot complete; the message names the URL or file."""


@dataclass
class FetchReport:
    """What a fetch did, file by file."""

    downloaded: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


def parse_manifest(text: str, where: str) -> dict[str, str]:
    """`<sha256>  <relative path>` lines (sha256sum format) -> {path: sha256}."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name or name.startswith("/") or ".." in Path(name).parts:
            raise FetchError(f"{where}:{lineno}: not a manifest line (expected '<sha256>  <relative path>')")
        out[name] = digest.lower()
    if not out:
        raise FetchError(f"{where}: empty manifest")
    return out


def write_manifest(directory: Path, out: Path | None = None) -> Path:
    """Write a sha256sum-style manifest of every regular file under `directory` (for serving a copy)."""
    directory = Path(directory)
    out = out or directory / MANIFEST_NAME
    lines = [f"{sha256_file(p)}  {p.relative_to(directory).as_posix()}"
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + "/".join(quote(part) for part in name.split("/"))


def load_manifest(upstream: str, manifest: str | None, timeout: float = 30.0) -> dict[str, str]:
    """The manifest from a local file, a URL, or `<upstream>/MANIFEST.sha256`."""
    import httpx

    src = manifest or _url(upstream, MANIFEST_NAME)
    if not src.startswith(("http://", "https://")):
        try:
            return parse_manifest(Path(src).read_text(encoding="utf-8"), src)
        except OSError as exc:
            raise FetchError(f"{src}: cannot read manifest ({exc.strerror})") from exc
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            r = client.get(src)
    except httpx.HTTPError as exc:
        raise FetchError(f"{src}: cannot download the manifest ({exc})") from exc
    if r.status_code != 200:
        raise FetchError(f"{src}: HTTP {r.status_code}; pass --manifest FILE (sha256sum format) if the upstream "
                         "has none (`qihuang corpus manifest DIR` writes one for a local copy)")
    return parse_manifest(r.text, src)


def _download(client: object, url: str, dest: Path, digest: str, report: FetchReport, name: str,
              retries: int) -> None:
    """Download one file to `dest` via `dest.part`, resuming and verifying; raises FetchError."""
    import httpx

    assert isinstance(client, httpx.Client)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with client.stream("GET", url, headers=headers) as r:
                if r.status_code == 416:  # the .part is already complete (or longer than the file)
                    pass
                elif r.status_code not in (200, 206):
                    raise FetchError(f"{url}: HTTP {r.status_code}")
                else:
                    mode = "ab" if (have and r.status_code == 206) else "wb"
                    if mode == "ab":
                        report.resumed.append(name)
                    with open(part, mode) as fh:
                        for chunk in r.iter_bytes(CHUNK):
                            fh.write(chunk)
                            report.bytes += len(chunk)
        except httpx.HTTPError as exc:
            if attempt == retries:
                raise FetchError(f"{url}: {exc} (partial download kept in {part}; rerun to resume)") from exc
            time.sleep(min(2.0, 0.2 * (attempt + 1)))
            continue
        got = sha256_file(part)
        if got == digest:
            os.replace(part, dest)
            return
        part.unlink()  # corrupt or stale partial file: start over
        if attempt == retries:
            raise FetchError(f"{url}: checksum mismatch (expected {digest[:12]}…, got {got[:12]}…)")
    raise FetchError(f"{url}: download failed")


def fetch(dest: Path, upstream: str, manifest: str | None = None, only: list[str] | None = None,
          retries: int = 2, timeout: float = 60.0, log: Callable[[str], None] = lambda _m: None) -> FetchReport:
    """Download every manifest file missing or wrong under `dest`; files already verified are skipped."""
    import httpx

    entries = load_manifest(upstream, manifest, timeout)
    if only:
        entries = {k: v for k, v in entries.items() if k in set(only) or Path(k).name in set(only)}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = FetchReport()
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        for i, (name, digest) in enumerate(sorted(entries.items()), 1):
            target = dest / name
            if target.exists() and sha256_file(target) == digest:
                report.up_to_date.append(name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _download(client, _url(upstream, name), target, digest, report, name, retries)
                report.downloaded.append(name)
                log(f"[{i}/{len(entries)}] {name}")
            except FetchError as exc:
                report.failed[name] = str(exc)
                log(f"[{i}/{len(entries)}] FAILED {exc}")
    return report
