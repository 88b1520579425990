"""Which label should an explained cell get: the one ranked after its reasoning, or the one its text wrote?

    python benchmarks/explained_label_rule.py runs/ood/baron2016/rare12/sft runs/ood/baron2016/data/B_test.h5ad Group

``annotate --explain`` writes reasoning, then ranks the candidate labels after it (the label) and
keeps the answer the text itself wrote (``cellduality_reasoning_answer``). Under copy-aware
decoding the written answer follows the conclusion the reasoning states, and it is what
``evaluate`` reads. This prints, on labelled cells, the accuracy of each rule, how often they
differ and how many written answers name no candidate. Prompts are built the way ``adapt`` and
``ood_adapt.py --evaluate`` build them. The labels are read for scoring only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("cells", type=Path, help="labelled .h5ad")
    parser.add_argument("label_key")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import anndata as ad
    import torch

    from cellduality.adaptation.rows import build_rows
    from cellduality.inference import CellDualityModel
    from cellduality.inference.fast import classify_fast

    torch.set_num_threads(args.threads)
    mdl = CellDualityModel.load(args.model)
    task = mdl.task("annotation")
    cells = ad.read_h5ad(args.cells)
    examples = build_rows(cells, {"annotation": task}, seed=0, min_overlap=0.0).examples["annotation"]
    truth_of = dict(zip(cells.obs_names.astype(str), cells.obs[args.label_key].astype(str), strict=True))
    truth = np.array([truth_of[ex.meta["cell_id"]] for ex in examples])
    result = classify_fast(task, mdl, [task.primal_prompt(ex) for ex in examples], [task.split(ex) for ex in examples],
                           explain=True, max_new_tokens=args.max_new_tokens)
    ranked = np.array([task.render_answer(a) for a in result.labels])
    written = np.array(["" if w is None else task.render_answer(w) for w in result.written or []])
    print(json.dumps({
        "model": str(args.model), "cells": len(examples),
        "accuracy, label ranked after the reasoning (annotate)": round(float((ranked == truth).mean()), 4),
        "accuracy, answer the text wrote (evaluate)": round(float((written == truth).mean()), 4),
        "cells where the two differ": result.info["explained_written_differs"],
        "written answers naming no candidate": result.info["explained_unparsed"],
    }))


if __name__ == "__main__":
    main()
