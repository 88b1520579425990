"""Where data lives: the shared real-data folder, the download cache, output folders.

Nothing here downloads. ``shared_data_dir()`` finds the real single-cell data used by tests and
benchmarks (``$CELLDUALITY_DATA_DIR``, else ``../shared/data`` next to a source checkout);
``cache_dir()`` is where downloaded benchmark files go (``$CELLDUALITY_CACHE``, else
``~/.cache/cellduality``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cellduality.outputs import atomic_dir  # noqa: F401  (the one safe folder writer; kept importable here)


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
