"""Stage-2 protocol: does GRPO with the duality reward beat SFT, and how close does it get to the oracle?

For each dataset: sentences → tasks (with a validation split carved from training cells) → offline
teacher, once. Then for each seed, from one SFT model:

* ``sft``        -- SFT-only (Stage 1);
* ``sft_extra``  -- SFT continued for ``--extra-epochs`` more epochs (does RL beat training longer?);
* ``duality``    -- GRPO with the label-free duality reward (``--grpo-config``);
* ``oracle``     -- GRPO with the ground-truth reward, same config and budget;

each evaluated greedily on the whole validation and test splits. Jobs run as ``cellduality``
subprocesses, ``--jobs`` at a time (a GPU serves many small models at once); every finished
evaluation is copied to ``OUT/results/`` at once, so a run cut off at its time limit still
returns what it finished. ``benchmarks/stage2_table.py OUT`` turns the results into mean ± std
tables (choose the recipe on validation, report test).

    python benchmarks/stage2_protocol.py --out runs/stage2 --dataset pbmc68k_reduced --dataset kang2018 \
        --seeds 0 1 2 --grpo-config configs/grpo.yaml --jobs 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

#: How each dataset enters (``cellduality sentences`` / ``tasks build`` arguments).
DATASETS: dict[str, dict[str, list[str]]] = {
    "pbmc68k_reduced": {"sentences": ["--label-key", "bulk_labels"], "tasks": ["--task", "annotation", "--task", "generation"]},
    "kang2018": {"sentences": ["--label-key", "cell_type"], "tasks": ["--task", "annotation", "--task", "generation"]},
    "kang2018_perturbation": {"source": ["kang2018"], "sentences": ["--label-key", "cell_type"],
                              "tasks": ["--task", "perturbation"]},
    "a375_plx4720": {"sentences": [], "tasks": ["--task", "sensitivity"]},
}


@dataclass
class Job:
    name: str
    argv: list[str]
    after: list[str] = field(default_factory=list)
    collect: tuple[Path, Path] | None = None  # (file written by the job, copy under results/)


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "cellduality.cli.main", *map(str, args)]


def plan(args: argparse.Namespace) -> list[Job]:
    out: Path = args.out
    results: Path = args.results
    jobs: list[Job] = []
    for name in args.dataset:
        spec = DATASETS[name]
        base = out / name
        source = spec.get("source", [name])[0]
        prep = f"{name}/prep"
        inpainting = [t for t in ("annotation", "sensitivity") if t in spec["tasks"]]
        hidden = [x for t in inpainting for x in ("--option", f"{t}.n_hidden={args.n_hidden}")]
        jobs.append(Job(prep, ["bash", "-c", " && ".join([
            " ".join(cli("sentences", source, base / "sentences", "--top-k", 100, *spec["sentences"])),
            " ".join(cli("tasks", "build", base / "sentences", base / "tasks", *spec["tasks"], "--max-genes",
                         args.max_genes, *hidden, "--validation-fraction", args.validation_fraction, "--seed", 0)),
            " ".join(cli("teach", base / "tasks", base / "sft_data", "--n", 4)),
        ])]))
        for seed in args.seeds:
            run = base / f"seed{seed}"
            models = run / "models"
            sft_cfg = run / "sft.yaml"
            run.mkdir(parents=True, exist_ok=True)
            sft_cfg.write_text(json.dumps({"model": args.preset, "epochs": args.epochs, "learning_rate": args.sft_lr,
                                           "batch_size": 16, "seed": seed, "save_steps": 100000}))
            extra_cfg = run / "sft_extra.yaml"
            extra_cfg.write_text(json.dumps({"model": str(models / "sft"), "epochs": args.extra_epochs,
                                             "learning_rate": args.sft_lr / 4, "batch_size": 16, "seed": seed,
                                             "save_steps": 100000}))
            sft = f"{name}/{seed}/sft"
            jobs.append(Job(sft, cli("sft", base / "sft_data", models / "sft", "--config", sft_cfg), [prep]))
            trained: dict[str, tuple[str, list[str] | None]] = {
                "sft": (sft, None),
                "sft_extra": (f"{name}/{seed}/sft_extra",
                              cli("sft", base / "sft_data", models / "sft_extra", "--config", extra_cfg)),
            }
            for n_recipe, (recipe, config) in enumerate(args.grpo_config.items()):
                grpo_cfg = run / f"grpo_{recipe}.yaml"
                grpo_cfg.write_text(config.read_text() + f"\nseed: {seed}\n")
                arms = (("duality", "duality"), ("oracle", "ground-truth"))
                for method, reward in arms[:1] if args.oracle_once and n_recipe else arms:
                    key = method if recipe == "default" else f"{method}_{recipe}"
                    trained[key] = (f"{name}/{seed}/{key}",
                                    cli("grpo", base / "tasks", models / key, "--sft-model", models / "sft",
                                        "--config", grpo_cfg, "--reward", reward))
            for method, (job_name, argv) in trained.items():
                if argv is not None:
                    jobs.append(Job(job_name, argv, [sft]))
                for split in ("validation", "test"):
                    folder = run / "eval" / f"{method}_{split}"
                    jobs.append(Job(f"{job_name}/eval_{split}",
                                    cli("evaluate", models / method, base / "tasks", folder, "--split", split,
                                        "--no-baselines", "--no-reward-validity", "--batch-size", args.eval_batch,
                                        "--max-new-tokens", args.max_new_tokens),
                                    [job_name], (folder / "metrics.json",
                                                 results / name / f"seed{seed}" / f"{method}_{split}.json")))
            for method in (m for m in trained if m.startswith(("duality", "oracle"))):
                metrics = models / method / "metrics.json"
                jobs.append(Job(f"{name}/{seed}/{method}/train_metrics", ["true"], [f"{name}/{seed}/{method}"],
                                (metrics, results / name / f"seed{seed}" / f"{method}_train.json")))
            for reward in args.diagnose:
                suffix = "" if reward == "likelihood" else f"_{reward}"
                report = run / f"diagnose{suffix}.json"
                jobs.append(Job(f"{name}/{seed}/diagnose{suffix}", cli(
                    "diagnose", models / "sft", base / "tasks", "--split", "validation", "--reward", reward,
                    "--max-examples", args.diagnose_examples, "--out", report), [sft],
                    (report, results / name / f"seed{seed}" / report.name)))
    return jobs


def run(jobs: list[Job], n_jobs: int, logs: Path, deadline: float) -> dict[str, str]:
    """Run ``jobs`` respecting ``after``; return ``{name: status}``. Never starts a job past ``deadline``."""
    logs.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    pending = list(jobs)
    running: dict[Future, Job] = {}

    def start(job: Job) -> int:
        t0 = time.time()
        log = logs / (job.name.replace("/", "__") + ".log")
        with log.open("w") as f:
            code = subprocess.call(job.argv, stdout=f, stderr=subprocess.STDOUT)
        with log.open("a") as f:
            f.write(f"\n[exit {code} after {time.time() - t0:.1f} s]\n")
        if code == 0 and job.collect and job.collect[0].is_file():
            job.collect[1].parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(job.collect[0], job.collect[1])
        return code

    with ThreadPoolExecutor(n_jobs) as pool:
        while pending or running:
            for job in list(pending):
                if any(status.get(dep, "") not in ("ok",) for dep in job.after):
                    if any(status.get(dep, "").startswith(("failed", "skipped")) for dep in job.after):
                        status[job.name] = "skipped"
                        pending.remove(job)
                    continue
                if len(running) >= n_jobs:
                    break
                pending.remove(job)
                if time.time() > deadline:
                    status[job.name] = "skipped (deadline)"
                    continue
                running[pool.submit(start, job)] = job
                print(f"[{time.strftime('%H:%M:%S')}] start {job.name}", flush=True)
            if not running:
                if pending and all(any(status.get(d, "") != "ok" for d in j.after) for j in pending):
                    for job in pending:
                        status[job.name] = "skipped"
                    pending.clear()
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                code = future.result()
                status[job.name] = "ok" if code == 0 else f"failed ({code})"
                print(f"[{time.strftime('%H:%M:%S')}] {status[job.name]:>10} {job.name}", flush=True)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, help="where results and logs are copied (default OUT/results)")
    parser.add_argument("--dataset", action="append", choices=sorted(DATASETS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grpo-config", action="append", required=True,
                        help="GRPO settings YAML, or NAME=YAML (repeatable: recipes to choose from on validation)")
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--epochs", type=float, default=3.0,
                        help="SFT epochs; 2 left `mini` under-trained (one more epoch beat every GRPO arm)")
    parser.add_argument("--extra-epochs", type=float, default=1.0)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--max-genes", type=int, default=24)
    parser.add_argument("--n-hidden", type=int, default=6)
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--diagnose-examples", type=int, default=100)
    parser.add_argument("--diagnose", nargs="*", default=["likelihood"], choices=["likelihood", "paper"],
                        help="duality rewards to diagnose on the SFT model (validation split)")
    parser.add_argument("--oracle-once", action="store_true",
                        help="oracle GRPO with the first recipe only (recipes that change only the duality "
                             "reward share it; saves device time)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=1e9, help="seconds; no job starts after it")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty; choose a new folder.")
    args.out.mkdir(parents=True, exist_ok=True)
    args.results = args.results or args.out / "results"
    args.grpo_config = dict(
        (c.split("=", 1)[0], Path(c.split("=", 1)[1])) if "=" in c else ("default", Path(c)) for c in args.grpo_config)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    jobs = plan(args)
    start = time.time()
    status = run(jobs, args.jobs, args.results / "logs", start + args.time_limit)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": time.time() - start, "status": status}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "protocol.json").write_text(json.dumps(summary, indent=1))
    failed = {k: v for k, v in status.items() if v != "ok"}
    print(f"done in {summary['seconds']:.0f} s; {len(status) - len(failed)} ok, {len(failed)} not: {failed}")


if __name__ == "__main__":
    main()
