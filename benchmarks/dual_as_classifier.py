"""How much does the annotation dual read the label? The likelihood reward's numbers, used as a classifier.

For every test cell of a classification task (default: annotation), score ``x_u`` after the dual
prompt of *every* candidate label -- exactly what ``DualLikelihoodReward`` scores -- and report the
dual used as a classifier (argmax accuracy, predicted-label counts), the mean posterior of the true
label, its mean rank, the mean posterior per label (the dual's label prior, what
``likelihood_calibration`` divides by) and the right-vs-wrong AUC over *all* wrong labels.
``--generative-dual N`` scores instead the top-N genes of the cell after the *generation* task's
direct prompt for each type (a dual that sees no observed genes).

    python benchmarks/dual_as_classifier.py qs/models/sft qs/data/pbmc68k_reduced/tasks
    python benchmarks/dual_as_classifier.py qs/models/sft qs/data/pbmc68k_reduced/tasks --generative-dual 8

``--cells FILE.h5ad --label-key KEY`` reads labelled cells instead of a tasks folder, the prompts
built exactly as ``cellduality adapt`` builds them (``adaptation.rows.build_rows``: ranked within
the model's gene panel), the label only for scoring: does the reward's signal hold on another
domain (issue #12)? With ``--primal`` it also prints the *primal* used the same way (its
answer-only label likelihoods, what fast annotation ranks) and the two combined: GRPO with the
duality reward pulls the primal towards the dual's ranking, which can only help where the dual
ranks better. Under a KL penalty of weight beta, the policy that maximises a reward ``log P_dual(y)``
is ``pi_ref(y) * P_dual(y) ** (1 / beta)``: the "primal x dual" lines are that policy's accuracy
(beta = 1, and the dual sharpened by w = 1 / beta).

    python benchmarks/dual_as_classifier.py runs/ood/kang2018/seed0/models/sft --cells runs/ood/kang2018/data/B_test.h5ad \
        --label-key cell_type --primal
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cellduality.inference.model import CellDualityModel
from cellduality.models.scoring import make_score_fn
from cellduality.tasks.base import direct_prompt, direct_response, loads
from cellduality.tasks.builders import load_task_datasets, load_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("tasks_dir", nargs="?", help="a tasks folder (or --cells)")
    parser.add_argument("--cells", help="labelled .h5ad instead of a tasks folder (prompts as adapt builds them)")
    parser.add_argument("--label-key", help="with --cells: the .obs column of the labels")
    parser.add_argument("--primal", action="store_true", help="also the primal's answer-only label posterior")
    parser.add_argument("--model-frequencies", action="store_true",
                        help="with --cells and hide: rare: hide the genes rare in the model's training cells, not in "
                             "these cells (adapt's default recounts on the cells)")
    parser.add_argument("--task", default="annotation")
    parser.add_argument("--split", default="test")
    parser.add_argument("--generative-dual", type=int, default=0, metavar="N",
                        help="score the top-N genes after the generation task's prompt instead")
    args = parser.parse_args()
    if (args.tasks_dir is None) == (args.cells is None) or (args.cells is not None) != (args.label_key is not None):
        parser.error("give a tasks folder, or --cells with --label-key")
    mdl = CellDualityModel.load(args.model)  # the GPU when there is one
    if args.cells:
        tasks, rows, truth_names = _rows_from_cells(mdl.tasks, args.cells, args.label_key, args.task,
                                                    recount=not args.model_frequencies)
        args.split = Path(args.cells).name
    else:
        tasks = load_tasks(args.tasks_dir)
        rows = [r for r in load_task_datasets(args.tasks_dir, "primal")[args.split] if r["task"] == args.task]
        truth_names = [tasks[args.task].render_answer(loads(r["target"])) for r in rows]
    task = tasks[args.task]
    labels = task.answer_candidates()
    keys = [task.render_answer(a) for a in labels]
    unknown_labels = sorted(set(truth_names) - set(keys))
    if unknown_labels:  # a cell type the model was never taught cannot be right; counted, not hidden
        print(f"{sum(t in unknown_labels for t in truth_names)} cells of types the model does not know "
              f"({', '.join(unknown_labels)}) left out")
        rows = [r for r, t in zip(rows, truth_names, strict=True) if t in keys]
        truth_names = [t for t in truth_names if t in keys]
    truth = np.array([keys.index(t) for t in truth_names])
    model, tokenizer = mdl.model, mdl.tokenizer
    score = make_score_fn(model, tokenizer)
    prompts: list[str] = []
    targets: list[str] = []
    for r in rows:
        known, unknown = loads(r["known"]), loads(r["unknown"])
        if args.generative_dual:
            generation = tasks["generation"]
            cell = task.input_cell(known, unknown)[: args.generative_dual]
            prompts += [direct_prompt(generation.primal_templates[0].format(cell_type=k, n=generation.max_genes))
                        for k in keys]
            targets += [direct_response(" ".join(cell))] * len(keys)
        else:
            query = task.likelihood_queries(labels[0], known or {}, unknown, int(r["seed"]))
            prompts += query.prompts
            targets += query.targets
    logp = np.array([s.logprob for s in score(prompts, targets)]).reshape(len(rows), len(keys))
    post = _softmax(logp)
    dual = f"generation, top-{args.generative_dual} genes" if args.generative_dual else "inpainting"
    print(f"{len(rows)} {args.split} cells, {len(keys)} labels, dual: {dual}")
    print(f"majority class {np.bincount(truth, minlength=len(keys)).max() / len(truth):.3f}")
    _report("dual", post, truth)
    columns = {"dual": post}
    if args.primal:
        from cellduality.inference.fast import answer_prompts, rank_labels, taught_form

        form = taught_form(args.model, args.task)
        if not form:
            parser.error(f"{args.model} was not taught answer-only rows for {args.task}")
        cells = [(loads(r["known"]), loads(r["unknown"])) for r in rows]
        primal = rank_labels(task, mdl, answer_prompts(task, form, [r["prompt"] for r in rows], cells))
        _report("primal", primal, truth)
        combined = _softmax(np.log(primal + 1e-12) + np.log(post + 1e-12))
        _report("primal x dual", combined, truth)
        # the dual sharpened (likelihood_temperature 1/w): where a KL-regularised reward could pull at most
        print("primal x dual^w accuracy: " + ", ".join(
            f"w={w} {np.mean((np.log(primal + 1e-12) + w * logp).argmax(1) == truth):.3f}" for w in (3, 10, 30, 100)))
        differ = post.argmax(1) != primal.argmax(1)
        if differ.any():  # where a duality reward pulls a cell off the primal's answer: towards the truth?
            print(f"dual's favourite differs from the primal's on {differ.mean():.1%} of cells; there the primal is "
                  f"right on {np.mean(primal.argmax(1)[differ] == truth[differ]):.1%}, the dual on "
                  f"{np.mean(post.argmax(1)[differ] == truth[differ]):.1%}")
        columns |= {"primal": primal, "primal x dual": combined}
    print("label | cells | " + " | ".join(f"{n} predicted | {n} mean posterior" for n in columns))
    for i, k in enumerate(keys):
        print(f"{k} | {np.sum(truth == i)} | " + " | ".join(f"{np.sum(p.argmax(1) == i)} | {p[:, i].mean():.3f}"
                                                        for p in columns.values()))


def _softmax(logp: np.ndarray) -> np.ndarray:
    post = np.exp(logp - logp.max(1, keepdims=True))
    return post / post.sum(1, keepdims=True)


def _report(name: str, post: np.ndarray, truth: np.ndarray) -> None:
    """Accuracy, macro-F1, the true label's posterior and rank, right-vs-wrong AUC over all wrong labels."""
    from sklearn.metrics import f1_score

    right = post[np.arange(len(truth)), truth]
    wrong = np.ma.masked_array(post, mask=np.eye(post.shape[1], dtype=bool)[truth])
    auc = float(np.mean((right[:, None] > wrong) + 0.5 * (right[:, None] == wrong)))
    print(f"{name} as a classifier: accuracy {np.mean(post.argmax(1) == truth):.3f}, macro-F1 "
          f"{f1_score(truth, post.argmax(1), average='macro'):.3f}; true label: mean posterior {right.mean():.3f} "
          f"(flat {1 / post.shape[1]:.3f}), mean rank {1 + np.mean((post > right[:, None]).sum(1)):.2f}; "
          f"right-vs-wrong AUC (all wrong labels) {auc:.3f}")


def _rows_from_cells(tasks, cells_path: str, label_key: str, task_name: str, recount: bool):  # noqa: ANN001, ANN202
    """``adapt``'s rows for labelled cells, and each row's label (read only for scoring)."""
    import anndata as ad

    from cellduality.adaptation.rows import build_rows

    adata = ad.read_h5ad(cells_path)
    if label_key not in adata.obs:
        raise SystemExit(f"{cells_path} has no .obs column '{label_key}'")
    built = build_rows(adata, {task_name: tasks[task_name]}, seed=0, recount=recount)
    rows, tasks = built.rows, {**tasks, **built.tasks}
    label = dict(zip(adata.obs_names.astype(str), adata.obs[label_key].astype(str), strict=True))
    return tasks, rows, [label[r["id"].split(":", 1)[1]] for r in rows]


if __name__ == "__main__":
    main()
