"""A/B of the answer-only forms fast annotation can be taught (``teach`` option ``direct_primal_prompt``).

    python benchmarks/answer_form_ab.py --tasks QS/data/pbmc68k_reduced/tasks --out runs/answer_form --seeds 0 1 2 \
        [--forms primal answer_only both]

``QS`` is a ``cellduality quickstart --out QS`` folder (its pbmc68k tasks). For each form
(``primal``: the primal prompt + "Answer directly, without reasoning.", the default;
``answer_only``: the task's own prompt, candidates first; ``both``: a row of each, fast
annotation asking the answer-only way) it teaches once (offline teacher, n=4),
trains one SFT model per seed with the quickstart settings (``mini``, 2 epochs, lr 1e-3, batch
16) and measures:

* on Kang 2018 (unseen study): fast labels cells/s and agreement with the full path
  (``bench_annotate.py``, 500 cells, 20 explained);
* on the pbmc68k test split (142 cells): accuracy of fast labels and of generated answers, and
  their agreement (``evaluate --fast-labels`` and ``evaluate``);
* generation kNN@10 and GW on 60 test examples (the quickstart's evaluation size).

Prints one row per (form, seed) and mean ± std per form. About 7 minutes per model on 2 cores.
Finished models and evaluations are reused when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CD = [sys.executable, "-m", "cellduality.cli.main"]


def run(args: list, log: Path) -> None:
    with log.open("w") as handle:
        subprocess.run([str(a) for a in args], check=True, stdout=handle, stderr=subprocess.STDOUT)


def measure(tasks: Path, out: Path, form: str, seed: int) -> dict:
    model = out / f"sft_{form}_{seed}"
    if not (model / "sft_summary.json").is_file():
        run([*CD, "sft", out / f"sft_data_{form}", model, "--model", "mini", "--epochs", 2, "--set",
             "learning_rate=0.001", "--set", "batch_size=16", "--set", f"seed={seed}"], out / f"{model.name}.sft.log")
    bench = out / f"{model.name}.bench.txt"
    if not bench.is_file():
        run([sys.executable, ROOT / "benchmarks" / "bench_annotate.py", "--model", model, "--reasoning-cells", 20,
             "--full-cells", 500, "--explain-share", 0], bench)
    text = bench.read_text()
    evals = {}
    for kind, extra in (("fast", ["--task", "annotation", "--fast-labels"]), ("gen", ["--task", "annotation"]),
                        ("generation", ["--task", "generation", "--max-examples", 60])):
        folder = out / f"ev_{form}_{seed}_{kind}"
        if not (folder / "metrics.json").is_file():
            run([*CD, "evaluate", model, tasks, folder, *extra, "--no-baselines", "--no-reward-validity",
                 "--batch-size", 32, "--overwrite"], out / f"{folder.name}.log")
        evals[kind] = folder
    fast = pd.read_csv(evals["fast"] / "predictions_annotation.csv", keep_default_na=False).set_index("id")
    gen = pd.read_csv(evals["gen"] / "predictions_annotation.csv", keep_default_na=False).set_index("id").loc[fast.index]
    generation = json.loads((evals["generation"] / "metrics.json").read_text())["generation"]

    def figure(pattern: str) -> float:
        return float(re.search(pattern, text).group(1))

    return {"form": form, "seed": seed,
            "kang cells/s": figure(r"labels \+ confidence: ([\d.]+)"),
            "kang agree %": figure(r"agreement fast vs full path: ([\d.]+)%"),
            "pbmc fast acc %": 100 * fast["correct"].mean(), "pbmc generated acc %": 100 * gen["correct"].mean(),
            "pbmc agree %": 100 * (fast["parsed"] == gen["parsed"]).mean(),
            "gen kNN@10 %": 100 * generation["knn@10"], "gen GW": generation["gw"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=Path, required=True, help="a tasks folder (quickstart: data/pbmc68k_reduced/tasks)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--forms", nargs="+", default=["primal", "answer_only", "both"],
                        choices=["primal", "answer_only", "both"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for form in args.forms:
        data = args.out / f"sft_data_{form}"
        if not (data / "dataset_dict.json").is_file():
            config = args.out / f"teach_{form}.yaml"
            config.write_text(f"direct_primal_prompt: {form}\n")
            run([*CD, "teach", args.tasks, data, "--n", 4, "--config", config], args.out / f"teach_{form}.log")
        for seed in args.seeds:
            rows.append(measure(args.tasks, args.out, form, seed))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.round(1).to_string(index=False))
    for form, part in table.groupby("form", sort=False):
        print(form, "; ".join(f"{c} {part[c].mean():.1f} ± {part[c].std(ddof=1) if len(part) > 1 else 0:.1f}"
                              for c in table.columns[2:]))


if __name__ == "__main__":
    main()
