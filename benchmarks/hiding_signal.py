"""How much can an inpainting dual read the label, for each way of hiding genes? A classical proxy.

With a perfect dual, ``log P(x_u | label, x_k) = log P(label | x) - log P(label | x_k) + const``
(Bayes), so the duality reward can only separate labels as far as the hidden genes ``x_u`` say
something about the label that the shown genes ``x_k`` do not. This script estimates that with
logistic regression on gene presence (the classical anchor of ``../shared/data/BASELINES.md``),
*before* any model is trained, for each ``hide`` strategy of the annotation task:

* ``info``: log-loss of ``P(label | x_k)`` minus log-loss of ``P(label | x)`` (nats; the
  conditional mutual information ``I(label; x_u | x_k)`` up to the models' error): 0 means the
  best possible dual is flat -- what a well-trained dual converges to;
* ``ideal dual acc``: accuracy of ``argmax_label log P(label | x) - log P(label | x_k)``, the
  perfect dual used as a classifier (what ``dual_as_classifier.py`` measures on a real model).

Domain A is 5-fold cross-validated on a sentences folder, with the splits the tasks make
(``Task.split``); with ``--cells`` the models fit on A are read on another domain's labelled cells,
posed exactly as ``cellduality adapt`` poses them (``build_rows``), with ``hide: rare`` recounted
on those cells (``cells``) or kept from A (``model``). Labels are read here for scoring only.

    python benchmarks/hiding_signal.py runs/ood/kang2018/sentences --cells runs/ood/kang2018/data/B_test.h5ad \
        --label-key cell_type --max-genes 24 --hide interleaved:6 interleaved:12 tail:12 rare:6 rare:12
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _presence(cells: list[list[str]], genes: dict[str, int]) -> np.ndarray:
    x = np.zeros((len(cells), len(genes)), dtype=np.float32)
    for r, cell in enumerate(cells):
        for g in cell:
            if g in genes:
                x[r, genes[g]] = 1.0
    return x


def _shown(known: dict) -> list[str]:
    return [g for g in known["masked"] if g is not None]


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import cross_val_predict

    from cellduality.sentences import CellSentenceDataset
    from cellduality.tasks.builders import make_tasks
    from cellduality.tasks.inpainting import full_cell

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sentences", help="domain A: a sentences folder (its train split is used)")
    parser.add_argument("--cells", help="domain B: labelled .h5ad, posed as adapt poses it")
    parser.add_argument("--label-key", default=None)
    parser.add_argument("--max-genes", type=int, default=24)
    parser.add_argument("--hide", nargs="+", default=["interleaved:6", "interleaved:12", "tail:12", "rare:12"],
                        metavar="STRATEGY:M")
    args = parser.parse_args()

    cells = CellSentenceDataset.load(args.sentences)
    train = cells.splits["train"].tolist() or list(range(len(cells.sentences)))
    fit = lambda: LogisticRegression(C=0.5, max_iter=2000)  # noqa: E731
    adata = None
    if args.cells:
        import anndata as ad

        adata = ad.read_h5ad(args.cells)
    print(f"{'hide':16s} | A: acc x | acc x_k | info (nats) | ideal dual acc"
          + (" | B (recount): acc x | acc x_k | info | ideal dual | B (A's counts): info | ideal dual" if adata else ""))
    for spec in args.hide:
        hide, m = spec.split(":")
        task = make_tasks(cells, ["annotation"], train, label_key=args.label_key, max_genes=args.max_genes,
                          task_options={"annotation": {"hide": hide, "n_hidden": int(m)}})["annotation"]
        examples = task.make_examples(cells, train, seed=0)
        splits = [task.split(ex) for ex in examples]
        full = [list(ex.input["cell"]) for ex in examples]
        shown = [_shown(k) for k, _ in splits]
        labels = sorted({ex.target for ex in examples})
        y = np.array([labels.index(ex.target) for ex in examples])
        genes = {g: i for i, g in enumerate(sorted({g for c in full for g in c}))}
        p_x = cross_val_predict(fit(), _presence(full, genes), y, cv=5, method="predict_proba")
        p_k = cross_val_predict(fit(), _presence(shown, genes), y, cv=5, method="predict_proba")
        line = (f"{spec:16s} | {accuracy_score(y, p_x.argmax(1)):.3f} | {accuracy_score(y, p_k.argmax(1)):.3f} | "
                f"{log_loss(y, p_k) - log_loss(y, p_x):.3f} | "
                f"{accuracy_score(y, (np.log(p_x) - np.log(p_k)).argmax(1)):.3f}")
        if adata is not None:
            from cellduality.adaptation.rows import build_rows

            model_x = fit().fit(_presence(full, genes), y)
            model_k = fit().fit(_presence(shown, genes), y)
            truth = dict(zip(adata.obs_names.astype(str), adata.obs[args.label_key].astype(str), strict=True))
            for recount in (True, False) if hide == "rare" else (True,):
                rows = build_rows(adata, {"annotation": task}, seed=0, recount=recount).rows
                keep = [r for r in rows if truth[r["id"].split(":", 1)[1]] in labels]
                yb = np.array([labels.index(truth[r["id"].split(":", 1)[1]]) for r in keep])
                parts = [(json.loads(r["known"]), json.loads(r["unknown"])) for r in keep]
                q_x = model_x.predict_proba(_presence([full_cell(k, u) for k, u in parts], genes))
                q_k = model_k.predict_proba(_presence([_shown(k) for k, _ in parts], genes))
                ll = log_loss(yb, q_k, labels=range(len(labels))) - log_loss(yb, q_x, labels=range(len(labels)))
                dual = accuracy_score(yb, (np.log(q_x) - np.log(q_k)).argmax(1))
                if recount:
                    line += (f" | {accuracy_score(yb, q_x.argmax(1)):.3f} | {accuracy_score(yb, q_k.argmax(1)):.3f}"
                             f" | {ll:.3f} | {dual:.3f}")
                else:
                    line += f" | {ll:.3f} | {dual:.3f}"
            if hide != "rare":
                line += " | same | same"
        print(line, flush=True)


if __name__ == "__main__":
    main()
