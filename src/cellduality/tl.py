"""``cd.tl``: the scverse-style tools namespace (``import cellduality as cd; cd.tl.adapt(adata, model, out)``).

Each entry is a thin re-export of the function that does the work, so the notebook API and the
``cellduality`` command share one implementation. Add tools here as they land.
"""

from cellduality.adaptation import adapt

__all__ = ["adapt"]
