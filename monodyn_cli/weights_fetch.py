"""Downloading weights into the monodyn cache: the one place monodyn talks to the network (DESIGN.md, Weights).

A direct download goes to `<cache>/<file>.partial` first, so a cut connection or Ctrl-C keeps what arrived and the
next fetch asks the server for the rest (an HTTP Range request; a server that ignores it sends the whole file
again). The finished file is checked against the published sha256 (or its published prefix), then renamed to its
final name: the loaders never see half a file. A file inside an archive (RAFT's models.zip) is extracted from the
finished archive, which is then deleted. Hugging Face models go through `huggingface_hub.snapshot_download` (its
own resume and progress) into a partial folder that is renamed when complete. `$HF_ENDPOINT` picks a mirror.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import zipfile
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from models.errors import MonodynError
from models.files import fsync, remove, replace_folder
from models.weights import WeightSpec, cache_dir

CHUNK = 1 << 20
TIMEOUT_S = 30.0


class DownloadError(MonodynError):
    """A fetch failed (offline, cut off, bad checksum, server error); the message says what to do next."""


class Meter(Protocol):
    """Progress of one download: `start(description, total bytes or None, already)` then `advance(bytes)`."""

    def start(self, description: str, total: int | None, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


def target_path(spec: WeightSpec) -> Path:
    """Where a fetch puts `spec` (the first cache name the loaders look for)."""
    return cache_dir() / spec.filenames[0]


def fetch(spec: WeightSpec, meter: Meter, timeout: float = TIMEOUT_S) -> Path:
    """Download `spec` from its official source into the cache; returns the final path."""
    if spec.hub_id:
        return _fetch_hub(spec, meter)
    if spec.url is None:
        raise DownloadError(f"{spec.name} has no download link monodyn knows: get it from {spec.source}")
    target = target_path(spec)
    if spec.member is None:
        return download(spec.url, target, meter, spec.name, sha256=spec.sha256, timeout=timeout)
    archive = cache_dir() / "downloads" / Path(urlsplit(spec.url).path).name
    if not archive.exists():  # complete archives only get this name; fetch_many drops it after the last member
        download(spec.url, archive, meter, spec.name, sha256=None, timeout=timeout,
                 by_hand=f"download {spec.url} on a machine with internet, unzip it and put {spec.member} at {target}")
    extract(archive, spec.member, target)
    return target


def download(url: str, target: Path, meter: Meter, label: str, sha256: str | None = None,
             timeout: float = TIMEOUT_S, by_hand: str | None = None) -> Path:
    """`url` -> `target`, resuming `<target>.partial`; checked against `sha256` (full or a prefix) when given.
    `by_hand`: what the offline message tells the user to do instead (default: download `url` to `target`)."""
    by_hand = by_hand or f"download {url} on a machine with internet and put it at {target}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": "monodyn", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the partial file is already whole
            return _finish(partial, target, sha256, url)
        raise DownloadError(f"{url} answered HTTP {e.code} ({e.reason}): the file may have moved; {by_hand}") from None
    except (URLError, socket.timeout, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"cannot reach {urlsplit(url).netloc} ({reason}): this machine looks offline; "
                            f"{by_hand}") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server ignored the Range request and sends everything
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        meter.start(f"fetch {label}", total, have)
        received = have
        try:
            with open(partial, "ab" if resumed else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    meter.advance(len(chunk))
        except (HTTPException, OSError, socket.timeout) as e:
            if isinstance(e, OSError) and e.filename:
                raise  # our disk, not the network (e.g. no space left): the CLI's own one-line message
            raise DownloadError(_cut_off(label, received, total, e)) from None
    if total is not None and received < total:
        raise DownloadError(_cut_off(label, received, total, "connection closed early"))
    return _finish(partial, target, sha256, url)


def _cut_off(label: str, received: int, total: int | None, why) -> str:
    of = f" of {total}" if total else ""
    return (f"the download of {label} was cut off after {received}{of} bytes ({why}): run the same command again "
            "to resume it")


def _finish(partial: Path, target: Path, sha256: str | None, url: str) -> Path:
    if sha256:
        got = file_sha256(partial)
        if not got.startswith(sha256.lower()):
            partial.unlink()
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}..., got {got}; the file was "
                                "deleted: run the command again (if it repeats, the server sends a different file)")
    fsync(partial)
    os.replace(partial, target)
    fsync(target.parent)
    return target


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def extract(archive: Path, member: str, target: Path) -> Path:
    """Copy `member` of the zip `archive` to `target` (through a partial name), then delete the archive."""
    try:
        with zipfile.ZipFile(archive) as z:
            if member not in z.namelist():
                raise DownloadError(f"{archive} has no {member} (it holds {', '.join(z.namelist()[:6])}): the archive "
                                    "changed; get the file by hand")
            partial = target.with_name(target.name + ".partial")
            with z.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
    except zipfile.BadZipFile:
        archive.unlink()
        raise DownloadError(f"{archive.name} is not a zip archive (the server sent something else); it was deleted: "
                            "run the command again") from None
    fsync(partial)
    os.replace(partial, target)
    return target


def drop_archives(specs: list[WeightSpec]) -> None:
    """Delete the archives these fetches extracted from (kept until every member asked for was taken out)."""
    for spec in specs:
        if spec.member is not None and spec.url is not None:
            (cache_dir() / "downloads" / Path(urlsplit(spec.url).path).name).unlink(missing_ok=True)


def _fetch_hub(spec: WeightSpec, meter: Meter) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DownloadError(f"fetching {spec.name} needs huggingface_hub: `pip install huggingface_hub`") from None
    target = target_path(spec)
    partial = target.with_name(target.name + ".partial")  # huggingface_hub resumes its files inside it
    meter.start(f"fetch {spec.name} ({spec.hub_id})", None, 0)
    try:
        snapshot_download(spec.hub_id, local_dir=partial, endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as e:  # huggingface_hub raises requests', httpx' and its own errors; all mean "not fetched"
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"cannot download {spec.hub_id} from Hugging Face ({why[:200]}): if this machine is "
                            f"offline, run `huggingface-cli download {spec.hub_id}` on one with internet and copy the "
                            f"folder to {target}; run this command again to resume") from None
    remove(partial / ".cache")  # huggingface_hub's resume metadata
    replace_folder(partial, target)
    return target


def fetch_many(specs: list[WeightSpec], meter_for: Callable[[], Meter], timeout: float = TIMEOUT_S
               ) -> list[tuple[WeightSpec, Path | None, str]]:
    """Fetch each spec, going on after a failure; returns (spec, path or None, the error line or '')."""
    results = []
    for spec in specs:
        try:
            results.append((spec, fetch(spec, meter_for(), timeout), ""))
        except DownloadError as e:
            results.append((spec, None, str(e)))
    drop_archives([s for s, path, _ in results if path is not None])
    return results
