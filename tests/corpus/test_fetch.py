"""`fetch` against a real HTTP server on 127.0.0.1 serving a small copy: download, verify, resume, reject bad."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from qihuang.corpus.fetch import FetchError, fetch, sha256_file, write_manifest
from tests.corpus.samples import make_library


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support (206), logging every request."""

    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        RangeHandler.requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        start = int(rng.removeprefix("bytes=").split("-")[0])
        data = path.read_bytes()
        if start >= len(data):
            self.send_response(416)
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        import io

        return io.BytesIO(data[start:])


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "upstream"
    root.mkdir()
    files = make_library(root / "books")
    for key in ("binary", "empty", "unknown", "pdf"):
        files[key].unlink()
    write_manifest(root / "books")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/books", root / "books"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_verify_and_skip_when_up_to_date(server: tuple[str, Path], tmp_path: Path) -> None:
    url, src = server
    dest = tmp_path / "data"
    report = fetch(dest, url)
    expected = sorted(p.name for p in src.iterdir() if p.name != "MANIFEST.sha256")
    assert sorted(report.downloaded) == expected and not report.failed
    for name in expected:
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    again = fetch(dest, url)
    assert again.downloaded == [] and sorted(again.up_to_date) == expected


def test_resume_partial_download(server: tuple[str, Path], tmp_path: Path) -> None:
    url, src = server
    name = "001-试伤寒论.txt"
    data = (src / name).read_bytes()
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / (name + ".part")).write_bytes(data[: len(data) // 2])
    report = fetch(dest, url, only=[name])
    assert report.resumed == [name] and report.downloaded == [name]
    assert (dest / name).read_bytes() == data and not (dest / (name + ".part")).exists()
    assert any(r == f"bytes={len(data) // 2}-" for _, r in RangeHandler.requests)


def test_corrupt_partial_restarts_and_bad_upstream_fails(server: tuple[str, Path], tmp_path: Path) -> None:
    url, src = server
    name = "003-试药本草.txt"
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / (name + ".part")).write_bytes(b"garbage that is not the start of the file")
    report = fetch(dest, url, only=[name])
    assert report.downloaded == [name] and sha256_file(dest / name) == sha256_file(src / name)
    # upstream file changed after the manifest was written: checksum mismatch is reported, nothing installed
    (src / "textbook.md").write_text("被篡改的内容", encoding="utf-8")
    report = fetch(tmp_path / "other", url, only=["textbook.md"], retries=1)
    assert "checksum mismatch" in report.failed["textbook.md"]
    assert not (tmp_path / "other" / "textbook.md").exists()


def test_missing_manifest_is_a_clear_error(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(FetchError, match="HTTP 404.*--manifest"):
        fetch(tmp_path / "d", url + "/nowhere")
    local = tmp_path / "m.sha256"
    local.write_text("not a manifest\n", encoding="utf-8")
    with pytest.raises(FetchError, match="m.sha256:1"):
        fetch(tmp_path / "d", url, manifest=str(local))
