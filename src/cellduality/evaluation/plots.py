"""PNG figures of an evaluation: confusion matrices and generated-vs-real embedding scatters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def confusion_png(frame: Any, path: str | Path, *, title: str = "confusion") -> Path:
    """Row-normalised confusion matrix (rows: truth, columns: prediction incl. ``<malformed>``)."""
    plt = _pyplot()
    counts = np.asarray(frame.values, dtype=float)
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = max(4.0, 0.45 * len(frame.columns) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, max(3.5, 0.45 * len(frame.index) + 2)))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(frame.columns)), [str(c) for c in frame.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(frame.index)), [str(i) for i in frame.index], fontsize=8)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(int(n)), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of true class")
    return _save(fig, path)


def embedding_png(real: np.ndarray, generated: np.ndarray, path: str | Path, *, title: str = "embedding") -> Path:
    """2-D PCA (fitted on the real cells) of real and generated embeddings, overlaid."""
    plt = _pyplot()
    real = np.asarray(real, dtype=float)
    generated = np.asarray(generated, dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(real) >= 2 and real.shape[1] >= 2:
        center = real.mean(axis=0)
        _, _, vt = np.linalg.svd(real - center, full_matrices=False)
        axes = vt[:2].T
        r2 = (real - center) @ axes
        ax.scatter(r2[:, 0], r2[:, 1], s=8, alpha=0.5, label=f"real ({len(real)})", color="tab:blue")
        if len(generated):
            g2 = (generated - center) @ axes
            ax.scatter(g2[:, 0], g2[:, 1], s=8, alpha=0.5, label=f"generated ({len(generated)})", color="tab:orange")
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "too few cells to plot", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
