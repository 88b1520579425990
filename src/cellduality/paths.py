"""Where data lives: the shared real-data folder, the download cache, output folders.

Nothing here downloads. ``shared_data_dir()`` finds the real single-cell data used by tests and
benchmarks (``$CELLDUALITY_DATA_DIR``, else ``../shared/data`` next to a source checkout);
``cache_dir()`` is where downloaded benchmark files go (``$CELLDUALITY_CACHE``, else
``~/.cache/cellduality``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def shared_data_dir() -> Path | None:
    """Return the folder with the shared real data, or ``None`` when it is absent."""
    env = os.environ.get("CELLDUALITY_DATA_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    # src/cellduality/paths.py -> repo root is parents[2]; ../shared/data sits beside the repo.
    for root in (here.parents[2], Path.cwd()):
        candidates.append(root.parent / "shared" / "data")
        candidates.append(root / "shared" / "data")
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


def cache_dir() -> Path:
    """Return (and create) the download cache folder."""
    path = Path(os.environ.get("CELLDUALITY_CACHE", Path.home() / ".cache" / "cellduality"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Write a folder all-or-nothing: fill the yielded temporary folder, it replaces ``out`` on success.

    The temporary folder sits beside ``out`` (same filesystem, so the final rename is atomic) and
    is removed if the block raises or is interrupted: a stage never leaves a half-written output.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
