"""Can fine-tuning on a user's unlabelled cells make the fast labels agree with the reasoning path?

    python benchmarks/distill_fast_path.py --model OUT/models/sft --out runs/distill --rows direct \\
        --label-map pbmc68k_to_kang

Issue #15 asks that fast labels (answer-only likelihood ranking, ``annotate``'s default) agree
with the full path (greedy reasoning, answer parsed from the text, as ``evaluate`` reads a model)
on >= 95 % of Kang 2018 cells. This measures one label-free way to get there, self-distillation:

1. on ``--distill-cells`` cells (disjoint from the evaluation cells) run the full path and keep
   each parsed answer as a pseudo-label (cells whose answer does not parse are counted, not used);
2. build SFT rows from them (``--rows``): ``direct`` -- the answer-only prompt answered with the
   pseudo-label; ``direct+self`` -- plus the model's own greedy reasoning as the completion of the
   plain prompt (an anchor for the reasoning path); ``direct+replay`` -- plus the model's own SFT
   training rows (read from the folder its ``cellduality.json`` records);
3. continue SFT from the model (``cellduality sft``, ``--epochs``, ``--lr``);
4. on the first ``--eval-cells`` cells, before and after: fast labels, full-path labels, their
   agreement, how many of each moved, and -- with ``--label-map`` -- each readout's accuracy
   against the file's labels mapped onto the model's label set (labels read for scoring only).

Not a product path: the figures decided against it (``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
KANG = ROOT.parent / "shared" / "data" / "kang2018_pbmc_ifnb_scgen" / "kang2018_scgen_valid.h5ad"
LABEL_MAPS = {
    # pbmc68k_reduced's 10 types onto Kang 2018's 7 (CD34+ has no Kang counterpart; FCGR3A+ monocytes none in pbmc68k)
    "pbmc68k_to_kang": {
        "CD19+ B": "B", "CD14+ Monocyte": "CD14+Mono", "Dendritic": "Dendritic", "CD56+ NK": "NK",
        "CD8+ Cytotoxic T": "CD8T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8T", "CD4+/CD25 T Reg": "CD4T",
        "CD4+/CD45RA+/CD25- Naive T": "CD4T", "CD4+/CD45RO+ Memory": "CD4T",
    },
}


def readouts(model: Path, adata, max_new_tokens: int, batch_size: int) -> dict:
    """Fast labels, full-path texts and parsed labels of ``model`` on every cell of ``adata``."""
    from bench_annotate import _examples  # the examples annotate builds (same sentences, same seeds)

    from cellduality.inference import CellDualityModel
    from cellduality.inference.fast import answer_prompts, generate_sorted, rank_labels, taught_form
    from cellduality.tasks.base import PRIMAL_DIRECT

    mdl = CellDualityModel.load(model)
    task = mdl.task("annotation")
    examples = _examples(adata, mdl, task)
    prompts = [task.primal_prompt(ex) for ex in examples]
    form = taught_form(mdl.path, task.name) or PRIMAL_DIRECT
    asked = answer_prompts(task, form, prompts, [task.split(ex) for ex in examples])
    labels = [task.render_answer(a) for a in task.answer_candidates()]
    fast = [labels[i] for i in rank_labels(task, mdl, asked).argmax(axis=1)]
    texts = generate_sorted(mdl, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
    full = [task.parse_primal(t) for t in texts]
    return {"prompts": prompts, "asked": asked, "fast": fast, "texts": texts,
            "full": [None if a is None else task.render_answer(a) for a in full]}


def agreement(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=KANG)
    parser.add_argument("--out", required=True, type=Path, help="new folder: rows, distilled model, readouts")
    parser.add_argument("--eval-cells", type=int, default=500, help="the first N cells (as bench_annotate.py)")
    parser.add_argument("--distill-cells", type=int, default=1000, help="the N cells after them")
    parser.add_argument("--rows", choices=["direct", "direct+self", "direct+replay"], default="direct")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-key", default="cell_type")
    parser.add_argument("--label-map", choices=sorted(LABEL_MAPS), default=None)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty; give a new folder.")

    import datasets
    import torch
    from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

    from cellduality.models.loading import read_model_info
    from cellduality.sentences import read_h5ad
    from cellduality.tasks.base import direct_response

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    adata = read_h5ad(args.data)
    n_eval = args.eval_cells
    if adata.n_obs < n_eval + args.distill_cells:
        sys.exit(f"{args.data} has {adata.n_obs} cells; need {n_eval} + {args.distill_cells}.")
    evaluate = adata[:n_eval].copy()
    pool = adata[n_eval:n_eval + args.distill_cells].copy()
    t = time.perf_counter()
    seen = readouts(args.model, pool, args.max_new_tokens, args.batch_size)
    kept = [i for i, a in enumerate(seen["full"]) if a is not None]
    print(f"distillation cells: {pool.n_obs}, full-path answer parsed for {len(kept)} ({pool.n_obs - len(kept)} "
          f"left out); agreement fast vs full on them {agreement(seen['fast'], seen['full']):.1%} "
          f"({time.perf_counter() - t:.0f} s)")
    rows = [{"prompt": seen["asked"][i], "completion": direct_response(seen["full"][i]), "task": "annotation",
             "direction": "primal_direct", "id": f"distill{i}"} for i in kept]
    if args.rows == "direct+self":
        rows += [{"prompt": seen["prompts"][i], "completion": seen["texts"][i].strip(), "task": "annotation",
                  "direction": "primal", "id": f"distill{i}"} for i in kept]
    train = Dataset.from_list(rows)
    info = read_model_info(args.model)
    sft_data = Path(str(info.get("sft_data") or ""))
    if not (sft_data / "tasks.json").is_file():
        sys.exit(f"{args.model}'s SFT data folder ({sft_data}) is not here; its tasks.json is needed.")
    if args.rows == "direct+replay":
        original = load_from_disk(str(sft_data))["train"].select_columns(train.column_names)
        train = concatenate_datasets([train, original]).shuffle(seed=args.seed)
    data = args.out / "data"
    DatasetDict({"train": train, "test": train.select(range(min(64, len(train))))}).save_to_disk(str(data))
    for name in ("tasks.json", "inverse.json", "vocabulary.json"):
        if (sft_data / name).is_file():
            shutil.copy(sft_data / name, data / name)
    config = args.out / "sft.yaml"
    config.write_text(json.dumps({"model": str(args.model), "epochs": args.epochs, "learning_rate": args.lr,
                                  "batch_size": 16, "seed": args.seed, "save_steps": 100000}))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cellduality.cli.main", "sft", str(data), str(args.out / "model"),
                    "--config", str(config)], check=True, stdout=subprocess.DEVNULL)
    print(f"SFT on {len(train)} rows ({args.rows}, {args.epochs} epochs, lr {args.lr}): "
          f"{time.perf_counter() - t:.0f} s")

    before = readouts(args.model, evaluate, args.max_new_tokens, args.batch_size)
    after = readouts(args.out / "model", evaluate, args.max_new_tokens, args.batch_size)
    truth = evaluate.obs[args.label_key].astype(str).tolist() if args.label_map else None
    mapping = LABEL_MAPS.get(args.label_map or "", {})
    results = {}
    for name, r in (("before", before), ("after", after)):
        line = {"agreement": agreement(r["fast"], r["full"]), "unparsed": sum(a is None for a in r["full"])}
        if truth is not None:
            line |= {f"{k}_accuracy": sum(mapping.get(x) == y for x, y in zip(r[k], truth, strict=True)) / n_eval
                     for k in ("fast", "full")}
        results[name] = line
        print(f"{name}: agreement fast vs full {line['agreement']:.1%} of {n_eval} cells, {line['unparsed']} unparsed"
              + (f"; mapped accuracy fast {line['fast_accuracy']:.1%}, full {line['full_accuracy']:.1%}"
                 if truth is not None else ""))
    moved = {k: 1 - agreement(before[k], after[k]) for k in ("fast", "full")}
    print(f"moved by the fine-tuning: fast labels {moved['fast']:.1%}, full-path labels {moved['full']:.1%}; "
          f"distilled fast vs original full {agreement(after['fast'], before['full']):.1%}")
    (args.out / "readouts.json").write_text(json.dumps(
        {"results": results, "moved": moved, **{f"{n}_{k}": r[k] for n, r in (("before", before), ("after", after))
                                               for k in ("fast", "full")}}, indent=1))


if __name__ == "__main__":
    main()
