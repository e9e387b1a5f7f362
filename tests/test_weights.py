"""`monodyn weights`: fetches against a server on 127.0.0.1 serving small fake files (a whole download, one cut off
and resumed with a Range request, a bad checksum, a zip member, no network), and list / path / the loaders finding
what a fetch put in the cache. Nothing here needs the internet."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from models import weights
from models.weights import WeightSpec
from monodyn_cli import weights_fetch
from monodyn_cli.app import app
from monodyn_cli.weights_fetch import DownloadError

runner = CliRunner()
PAYLOAD = bytes(range(256)) * 4000  # 1 MB: several chunks


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


class Server:
    """Serves `files` (path -> bytes) with Range support; a path in `cut_once` stops after half its bytes the
    first time it is asked for. `log` holds (path, Range header, bytes sent) of every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut_once, self.log = files, set(), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                asked = self.headers.get("Range")
                start = int(asked.split("=")[1].split("-")[0]) if asked else 0
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if asked else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path in outer.cut_once:
                    outer.cut_once.discard(self.path)
                    body = body[:len(body) // 2]
                self.wfile.write(body)
                outer.log.append((self.path, asked, len(body)))

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path / "cache"))
    for spec in weights.KNOWN.values():
        monkeypatch.delenv(spec.env, raising=False)
    s = Server({"/w.pth": PAYLOAD, "/models.zip": _zip({"models/raft-small.pth": b"small", "models/x": b"x"})})
    yield s
    s.close()


class Meter:
    def __init__(self):
        self.total, self.done = None, 0

    def start(self, description, total, done):
        self.total, self.done = total, done

    def advance(self, n):
        self.done += n


def _spec(server, **kw) -> WeightSpec:
    fields = dict(name="fake", env="MONODYN_FAKE", filenames=("fake.pth",), source="a test server",
                  url=f"{server.url}/w.pth", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    return WeightSpec(**{**fields, **kw})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_downloads_checks_the_sha256_and_renames_into_the_cache(server, tmp_path):
    meter = Meter()
    path = weights_fetch.fetch(_spec(server), meter)
    assert path == tmp_path / "cache" / "fake.pth" and path.read_bytes() == PAYLOAD
    assert meter.total == meter.done == len(PAYLOAD)
    assert [p.name for p in path.parent.iterdir()] == ["fake.pth"]  # no partial left
    # a published prefix (torchvision's file names) is checked too
    assert weights_fetch.fetch(_spec(server, sha256=hashlib.sha256(PAYLOAD).hexdigest()[:8]), Meter()).exists()


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    server.cut_once.add("/w.pth")
    with pytest.raises(DownloadError, match=r"cut off after 512000 of 1024000 bytes .*run the same command again"):
        weights_fetch.fetch(_spec(server), Meter())
    partial = tmp_path / "cache" / "fake.pth.partial"
    assert partial.read_bytes() == PAYLOAD[:512000] and not (tmp_path / "cache" / "fake.pth").exists()
    meter = Meter()
    path = weights_fetch.fetch(_spec(server), meter)
    assert path.read_bytes() == PAYLOAD and not partial.exists()
    assert server.log[-1] == ("/w.pth", "bytes=512000-", len(PAYLOAD) - 512000)  # only the rest was sent
    assert (meter.total, meter.done) == (len(PAYLOAD), len(PAYLOAD))


def test_a_bad_checksum_deletes_the_download_and_says_so(server, tmp_path):
    with pytest.raises(DownloadError, match=r"checksum mismatch .*expected sha256 0000") as err:
        weights_fetch.fetch(_spec(server, sha256="0" * 64), Meter())
    assert "\n" not in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_no_network_is_one_clear_line(server, tmp_path, monkeypatch):
    port = closed_port()
    with pytest.raises(DownloadError, match=r"cannot reach 127.0.0.1:\d+ .*looks offline; download .* put it at"):
        weights_fetch.fetch(_spec(server, url=f"http://127.0.0.1:{port}/w.pth"), Meter())
    zipped = _spec(server, url=f"http://127.0.0.1:{port}/models.zip", member="models/raft-small.pth", sha256=None)
    with pytest.raises(DownloadError, match=r"unzip it and put models/raft-small.pth at .*fake.pth"):
        weights_fetch.fetch(zipped, Meter())
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(DownloadError, match=r"cannot download org/model from Hugging Face .*huggingface-cli download"):
        weights_fetch.fetch(_spec(server, url=None, sha256=None, hub_id="org/model", filenames=("model",)), Meter())
    assert not (tmp_path / "cache" / "model").exists()


def test_zip_members_are_extracted_from_one_download_and_the_raft_loader_finds_them(server, tmp_path, monkeypatch):
    spec = replace(weights.KNOWN["raft-small"], url=f"{server.url}/models.zip")
    other = replace(spec, name="other", filenames=("other",), member="models/x")
    monkeypatch.setitem(weights.KNOWN, "raft-small", spec)
    [(_, path, err), (_, other_path, _)] = weights_fetch.fetch_many([spec, other], Meter)
    assert err == "" and path == tmp_path / "cache" / "raft-small.pth" and path.read_bytes() == b"small"
    assert other_path.read_bytes() == b"x" and [p for p, *_ in server.log] == ["/models.zip"]  # downloaded once
    assert not (tmp_path / "cache" / "downloads" / "models.zip").exists()  # the archive goes once extracted
    from models.raft import find_checkpoint

    assert find_checkpoint(small=True) == path


def test_cli_fetch_list_path_and_bad_names(server, tmp_path, monkeypatch):
    monkeypatch.setitem(weights.KNOWN, "fake", _spec(server))
    missing = runner.invoke(app, ["weights", "path", "fake"])
    assert missing.exit_code == 1 and "weights fetch fake" in missing.output
    listed = runner.invoke(app, ["weights", "list"])
    assert listed.exit_code == 0 and "not found" in listed.output
    for name in ("raft-small", "sam2-video", "depth-anything", "gcd", "alexnet"):
        assert name in listed.output
    fetched = runner.invoke(app, ["weights", "fetch", "fake", "-q"])
    assert fetched.exit_code == 0, fetched.output
    path = tmp_path / "cache" / "fake.pth"
    assert path.read_bytes() == PAYLOAD
    shown = runner.invoke(app, ["weights", "path", "fake"])
    assert shown.exit_code == 0 and shown.stdout.strip() == str(path)
    listed = runner.invoke(app, ["weights", "list"])
    row = next(line for line in listed.output.splitlines() if "fake" in line)
    assert "yes" in row and "1000.0 KB" in row
    assert weights.locate(weights.KNOWN["fake"]) == (path, "monodyn cache")
    again = runner.invoke(app, ["weights", "fetch", "fake", "-q"])
    assert again.exit_code == 0 and "already present" in again.output and len(server.log) == 1
    for args, message in ((["fetch", "nope"], "unknown weights 'nope'"), (["fetch"], "or pass --all"),
                          (["fetch", "fake", "--all"], "not both"), (["path", "nope"], "unknown weights")):
        res = runner.invoke(app, ["weights", *args])
        assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output


def test_cli_fetch_offline_goes_on_with_the_others_and_exits_1(server, tmp_path, monkeypatch):
    monkeypatch.setitem(weights.KNOWN, "gone", _spec(server, name="gone", filenames=("gone.pth",),
                                                     url=f"http://127.0.0.1:{closed_port()}/w.pth"))
    monkeypatch.setitem(weights.KNOWN, "fake", _spec(server))
    res = runner.invoke(app, ["weights", "fetch", "gone", "fake", "-q"])
    assert res.exit_code == 1 and "gone: cannot reach" in res.output and "Traceback" not in res.output
    assert (tmp_path / "cache" / "fake.pth").read_bytes() == PAYLOAD


def test_every_registered_model_has_a_source_a_cache_name_and_a_user():
    for spec in weights.KNOWN.values():
        assert (spec.url is None) != (spec.hub_id is None), spec.name  # exactly one way to get it
        assert spec.filenames and spec.used_by and spec.approx_bytes, spec.name
        assert spec.sha256 is None or all(c in "0123456789abcdef" for c in spec.sha256)
