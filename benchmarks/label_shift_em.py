"""How much of domain B's shift is label shift? EM re-estimation of B's class prior, label-free.

    python benchmarks/label_shift_em.py runs/ood/kang2018/rare12/sft --data runs/ood/kang2018/data --label-key cell_type

A classical label-free adaptation (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of
a classifier to new a priori probabilities"): if only the class proportions change between
domains, ``P_B(y | x) ∝ P_A(y | x) · π_B(y) / π_A(y)``, and ``π_B`` can be estimated from B's
unlabelled cells by EM over the classifier's posteriors. The classifier here is the model's
answer-only label posterior (what fast annotation ranks). ``π_A`` is either the label frequency
of A's training cells or the model's mean posterior on them. ``π_B`` is estimated on B's
unlabelled adaptation half (``B_pool``), then applied to B's test half. It is also estimated on
the test cells themselves, as ``annotate`` would have to.

Why it matters for duality adaptation: under a KL penalty the policy that GRPO converges to with
a reward ``r(y)`` is ``π_ref(y | x) · exp(r(y) / β)``. The duality reward is a likelihood of the
hidden genes, which holds no class prior, so it cannot move the prior the way this correction
does. This script measures how much of the oracle's gain a prior change alone gives.

Expects ``DATA/{A_train,B_pool,B_test,A_test}.h5ad`` (``benchmarks/ood_adapt.py`` writes them).
Labels are read from A_train (for ``π_A``) and from the test files, for scoring only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def em_prior(posterior: np.ndarray, source_prior: np.ndarray, iterations: int = 1000, tol: float = 1e-8) -> np.ndarray:
    """Saerens et al. (2002): the class prior of the cells behind ``posterior`` (rows: cells)."""
    prior = source_prior.copy()
    for _ in range(iterations):
        adjusted = posterior * (prior / source_prior)
        adjusted /= adjusted.sum(axis=1, keepdims=True)
        new = adjusted.mean(axis=0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def posteriors(mdl, task, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The answer-only label posterior of every cell of ``path`` and its labels (None when absent)."""
    from bench_annotate import _examples  # the examples annotate builds (same sentences, same seeds)

    from cellduality.inference.fast import answer_prompts, rank_labels, taught_form
    from cellduality.sentences import read_h5ad
    from cellduality.tasks.base import PRIMAL_DIRECT

    adata = read_h5ad(path)
    examples = _examples(adata, mdl, task)
    prompts = [task.primal_prompt(ex) for ex in examples]
    form = taught_form(mdl.path, task.name) or PRIMAL_DIRECT
    post = rank_labels(task, mdl, answer_prompts(task, form, prompts, [task.split(ex) for ex in examples]))
    labels = adata.obs[label_key].astype(str).to_numpy() if label_key in adata.obs else None
    return post, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="SFT model folders (one per seed)")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--label-key", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from cellduality.inference import CellDualityModel

    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        mdl = CellDualityModel.load(model)
        task = mdl.task("annotation")
        names = np.array([task.render_answer(a) for a in task.answer_candidates()])
        p_train, y_train = posteriors(mdl, task, args.data / "A_train.h5ad", args.label_key)
        p_pool, _ = posteriors(mdl, task, args.data / "B_pool.h5ad", args.label_key)
        p_test, y_test = posteriors(mdl, task, args.data / "B_test.h5ad", args.label_key)
        p_a, y_a = posteriors(mdl, task, args.data / "A_test.h5ad", args.label_key)

        def accuracy(post: np.ndarray, truth: np.ndarray, names: np.ndarray = names) -> float:
            return float((names[post.argmax(axis=1)] == truth).mean())

        row = {"model": str(model), "B_test": accuracy(p_test, y_test), "A_test": accuracy(p_a, y_a),
               "B_prior_true": {n: float((y_test == n).mean()) for n in names}}
        sources = {"train labels": np.array([(y_train == n).mean() for n in names]),
                   "model's mean posterior on A": p_train.mean(axis=0)}
        for name, source in sources.items():
            source = np.clip(source, 1e-6, None)
            prior = em_prior(p_pool, source)
            on_test = em_prior(p_test, source)
            on_a = em_prior(p_a, source)
            row[name] = {"B_test": accuracy(p_test * prior / source, y_test),
                         "B_test, prior from the test cells": accuracy(p_test * on_test / source, y_test),
                         "A_test, prior from the A test cells": accuracy(p_a * on_a / source, y_a),
                         "B_prior": dict(zip(names.tolist(), prior.round(3).tolist(), strict=True))}
        rows.append(row)
        print(f"{model}: answer-only accuracy B {row['B_test']:.1%}, A {row['A_test']:.1%}; with B's prior by EM "
              + "; ".join(f"({name}) B {r['B_test']:.1%} [from the test cells {r['B_test, prior from the test cells']:.1%}]"
                          f", A {r['A_test, prior from the A test cells']:.1%}"
                          for name, r in ((n, row[n]) for n in sources)))
    for name in ("train labels", "model's mean posterior on A"):
        for key in ("B_test", "B_test, prior from the test cells", "A_test, prior from the A test cells"):
            values = np.array([r[name][key] for r in rows]) * 100
            print(f"mean ± std over {len(rows)}: EM ({name}) {key}: {values.mean():.1f} ± {values.std(ddof=1) if len(rows) > 1 else 0:.1f}")
    for key in ("B_test", "A_test"):
        values = np.array([r[key] for r in rows]) * 100
        print(f"mean ± std over {len(rows)}: no correction {key}: {values.mean():.1f} ± {values.std(ddof=1) if len(rows) > 1 else 0:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
