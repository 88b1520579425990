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
"""

from __future__ import annotations

import argparse

import numpy as np

from cellduality.models import load_model
from cellduality.models.loading import inference_device
from cellduality.models.scoring import make_score_fn
from cellduality.tasks.base import direct_prompt, direct_response, loads
from cellduality.tasks.builders import load_task_datasets, load_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("tasks_dir")
    parser.add_argument("--task", default="annotation")
    parser.add_argument("--split", default="test")
    parser.add_argument("--generative-dual", type=int, default=0, metavar="N",
                        help="score the top-N genes after the generation task's prompt instead")
    args = parser.parse_args()
    tasks = load_tasks(args.tasks_dir)
    task = tasks[args.task]
    rows = [r for r in load_task_datasets(args.tasks_dir, "primal")[args.split] if r["task"] == args.task]
    labels = task.answer_candidates()
    keys = [task.render_answer(a) for a in labels]
    truth = np.array([keys.index(task.render_answer(loads(r["target"]))) for r in rows])
    model, tokenizer = load_model(args.model, device=inference_device())
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
    post = np.exp(logp - logp.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    right = post[np.arange(len(rows)), truth]
    wrong = np.ma.masked_array(post, mask=np.eye(len(keys), dtype=bool)[truth])
    auc = float(np.mean((right[:, None] > wrong) + 0.5 * (right[:, None] == wrong)))
    dual = f"generation, top-{args.generative_dual} genes" if args.generative_dual else "inpainting"
    print(f"{len(rows)} {args.split} cells, {len(keys)} labels, dual: {dual}")
    print(f"dual as a classifier: accuracy {np.mean(post.argmax(1) == truth):.3f} "
          f"(majority class {np.bincount(truth).max() / len(truth):.3f})")
    print(f"true label: mean posterior {right.mean():.3f} (flat {1 / len(keys):.3f}), "
          f"mean rank {1 + np.mean((post > right[:, None]).sum(1)):.2f}; right-vs-wrong AUC (all wrong labels) {auc:.3f}")
    print("label | cells | predicted | mean posterior (the dual's prior)")
    for i, k in enumerate(keys):
        print(f"{k} | {np.sum(truth == i)} | {np.sum(post.argmax(1) == i)} | {post[:, i].mean():.3f}")


if __name__ == "__main__":
    main()
