"""Download a file into the cache, verified against its sha256, atomically.

Used for benchmark files by users who have internet (tests use a loopback HTTP server). A file
already in the cache with the right checksum is not downloaded again; a partial or corrupt
download never takes the final name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cellduality.datasets.registry import DatasetSpec, get_spec
from cellduality.errors import CellDualityError
from cellduality.paths import cache_dir

_CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` (skipped when ``dest`` already matches ``sha256``)."""
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            shutil.copyfileobj(response, out, _CHUNK)
        got = sha256_of(tmp)
        if sha256 is not None and got != sha256.lower():
            raise CellDualityError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                                   "the file changed upstream or the download was corrupted.")
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise CellDualityError(f"could not download {url}: {exc}; check the URL and your connection.") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(name: str | DatasetSpec, *, url: str | None = None, sha256: str | None = None,
          cache: str | Path | None = None) -> Path:
    """Path of a benchmark's file in the cache, downloading it (checksum-verified) if needed.

    ``url``/``sha256`` override the registry (for mirrors). Without a known URL the error names
    the accession to download from by hand.
    """
    spec = get_spec(name) if isinstance(name, str) else name
    url = url or spec.url
    sha256 = sha256 or spec.sha256
    if url is None:
        raise CellDualityError(f"no direct download known for {spec.name}; download it manually from "
                               f"{spec.accession} and pass the .h5ad path (or pass url=... to fetch).")
    filename = spec.filename or url.rstrip("/").split("/")[-1] or f"{spec.name}.h5ad"
    return download(url, Path(cache or cache_dir()) / spec.name / filename, sha256)
