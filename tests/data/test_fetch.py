"""Downloads with recorded checksums, over real HTTP served on the loopback interface.

The server publishes the shared data folder (or a corrupted or misbehaving stand-in) the way the
public hosts do, so these tests exercise urllib, the temporary-file dance and the checksum table
exactly as a real fetch would, without leaving the machine.
"""

import hashlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from xattn_ray.data.fetch import (
    MULTI30K_SHA256,
    MUSE_SHA256,
    FetchedFile,
    fetch_file,
    fetch_multi30k,
    fetch_muse,
)
from xattn_ray.errors import FetchError

from support import SHARED_DATA



class _Silent:
    def log_message(self, format: str, *args: object) -> None:
        """Keep the server's access log out of the test output."""


class _FileHandler(_Silent, SimpleHTTPRequestHandler):
    """Serves the server's root folder and records every requested path."""

    server: "_LoopbackServer"

    def __init__(
        self, request: socket.socket, client_address: tuple[str, int], server: "_LoopbackServer"
    ) -> None:
        super().__init__(request, client_address, server, directory=str(server.root))

    def do_GET(self) -> None:
        self.server.requested_paths.append(self.path)
        super().do_GET()


class _TruncatingHandler(_Silent, BaseHTTPRequestHandler):
    """Promises 1000 bytes, sends 10 and hangs up: a connection dropped mid-file."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True


class _LoopbackServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 and a free port, answering requests with `handler`."""

    daemon_threads = True

    def __init__(self, root: Path, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.root = root
        self.requested_paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


Serve = Callable[..., _LoopbackServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start loopback servers on demand, `serve(root[, handler])`; stop them after the test."""
    servers: list[_LoopbackServer] = []

    def start(
        root: Path, handler: type[BaseHTTPRequestHandler] = _FileHandler
    ) -> _LoopbackServer:
        server = _LoopbackServer(root, handler)
        # A short poll interval lets shutdown() return at once instead of after half a second.
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _bypass_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's HTTP proxy settings must not route loopback requests elsewhere."""
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, "127.0.0.1")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_files(results: list[FetchedFile], originals: Path) -> None:
    for result in results:
        assert result.path.read_bytes() == (originals / result.path.name).read_bytes()


def test_recorded_checksums_are_those_of_the_shared_files(shared_data: Path) -> None:
    for folder, table in (("multi30k", MULTI30K_SHA256), ("muse", MUSE_SHA256)):
        measured = {path.name: _sha256(path) for path in (shared_data / folder).iterdir()}
        assert measured == table, folder
        assert list(table) == sorted(table), f"{folder} table is not sorted"


def test_fetch_multi30k_downloads_all_22_files(
    shared_data: Path, serve: Serve, tmp_path: Path
) -> None:
    server = serve(shared_data)
    dest = tmp_path / "not" / "yet" / "there"

    results = fetch_multi30k(dest, base_url=f"{server.url}/multi30k")

    assert len(results) == 22
    assert all(result.downloaded for result in results)
    assert sorted(path.name for path in dest.iterdir()) == sorted(MULTI30K_SHA256)
    _assert_same_files(results, shared_data / "multi30k")


def test_fetch_muse_downloads_both_splits_of_each_pair(
    shared_data: Path, serve: Serve, tmp_path: Path
) -> None:
    server = serve(shared_data)

    results = fetch_muse(["de-fr", "fr-en"], tmp_path, base_url=f"{server.url}/muse")

    assert [result.path.name for result in results] == [
        "de-fr.0-5000.txt",
        "de-fr.5000-6500.txt",
        "fr-en.0-5000.txt",
        "fr-en.5000-6500.txt",
    ]
    assert all(result.downloaded for result in results)
    _assert_same_files(results, shared_data / "muse")


def test_unknown_muse_pair_is_an_error_before_any_request(serve: Serve, tmp_path: Path) -> None:
    server = serve(tmp_path)
    dest = tmp_path / "dest"

    with pytest.raises(FetchError, match=r"'xx-yy'.*known pairs: cs-en, de-en, de-fr"):
        fetch_muse(["de-fr", "xx-yy"], dest, base_url=server.url)

    assert server.requested_paths == []
    assert not dest.exists()


def test_second_fetch_skips_every_file_without_a_request(
    shared_data: Path, serve: Serve, tmp_path: Path
) -> None:
    server = serve(shared_data)
    base_url = f"{server.url}/multi30k"
    fetch_multi30k(tmp_path, base_url=base_url)
    requests_so_far = len(server.requested_paths)

    again = fetch_multi30k(tmp_path, base_url=base_url)

    assert not any(result.downloaded for result in again)
    assert len(server.requested_paths) == requests_so_far


def test_existing_file_with_wrong_content_is_replaced(
    shared_data: Path, serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(shared_data)
    stale = tmp_path / "de-fr.0-5000.txt"
    stale.write_text("not the dictionary\n")

    with caplog.at_level(logging.INFO, logger="xattn_ray.data.fetch"):
        results = fetch_muse(["de-fr"], tmp_path, base_url=f"{server.url}/muse")

    assert results[0] == FetchedFile(stale, downloaded=True)
    assert "de-fr.0-5000.txt: present but not the recorded checksum" in caplog.text
    _assert_same_files(results, shared_data / "muse")


def test_checksum_mismatch_leaves_nothing_behind(
    shared_data: Path, serve: Serve, tmp_path: Path
) -> None:
    corrupted = tmp_path / "server" / "muse"
    corrupted.mkdir(parents=True)
    original = (shared_data / "muse" / "de-fr.0-5000.txt").read_bytes()
    (corrupted / "de-fr.0-5000.txt").write_bytes(original.replace(b"e", b"x", 1))
    server = serve(tmp_path / "server")
    dest = tmp_path / "dest"

    with pytest.raises(FetchError, match=r"de-fr\.0-5000\.txt: checksum mismatch") as raised:
        fetch_muse(["de-fr"], dest, base_url=f"{server.url}/muse")

    message = str(raised.value)
    assert "\n" not in message
    assert MUSE_SHA256["de-fr.0-5000.txt"] in message
    assert list(dest.iterdir()) == []


def test_connection_dropped_mid_file_leaves_nothing_behind(serve: Serve, tmp_path: Path) -> None:
    server = serve(tmp_path, _TruncatingHandler)
    dest = tmp_path / "dest"

    with pytest.raises(FetchError, match=r"val\.en\.gz: .*closed after 10 of 1000 bytes"):
        fetch_file(f"{server.url}/val.en.gz", dest, MULTI30K_SHA256["val.en.gz"])

    assert list(dest.iterdir()) == []


def test_http_404_names_the_file(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    server = serve(tmp_path / "empty")
    dest = tmp_path / "dest"

    with pytest.raises(FetchError, match=r"val\.en\.gz: HTTP 404"):
        fetch_file(f"{server.url}/val.en.gz", dest, MULTI30K_SHA256["val.en.gz"])

    assert list(dest.iterdir()) == []


def test_cli_fetch_prints_a_summary_and_reports_errors_in_one_line(
    shared_data: Path, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xattn_ray.cli import main

    server = serve(shared_data)
    args = ["data", "fetch", "muse", "--pairs", "de-fr", "--dest", str(tmp_path), "--base-url", f"{server.url}/muse"]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"muse: 2 downloaded, 0 already present, in {tmp_path}",
                   f"muse: 0 downloaded, 2 already present, in {tmp_path}"]
    assert main(["data", "fetch", "muse", "--pairs", "xx-yy", "--dest", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("xattn-ray: error: ") and "'xx-yy'" in error and "\n" not in error
    assert main(["data", "fetch", "muse", "--dest", str(tmp_path)]) == 2
    assert "needs --pairs" in capsys.readouterr().err
