"""Out-of-distribution benchmark of label-free adaptation (issue #12): train with labels on domain A,
adapt on the *unlabelled* cells of domain B, evaluate on B.

Pairs (``../shared/data``): Kang 2018 PBMC control -> IFN-beta stimulated (``condition``, label
``cell_type``); Baron 2016 pancreas human -> mouse (``Batch``, label ``Group``; the CIDER file's
mouse genes are already harmonised to upper-case human symbols, so no ortholog table is needed --
with raw mouse symbols pass ``--orthologs`` to ``adapt``). B is split once (seed 0) into an
adaptation pool (its labels dropped) and a test split. Per seed, from one SFT model trained on A
through the CLI (``sentences`` / ``tasks build`` / ``teach`` / ``sft`` on A only):

* ``sft``        -- SFT-only;
* ``sft_extra``  -- SFT continued on A for ``--extra-epochs`` (does adaptation beat training longer?);
* ``duality``    -- ``cellduality adapt`` on B's unlabelled pool (the default recipe, ``--steps``);
* ``oracle``     -- GRPO on the same B prompts with B's labels (``grpo --reward ground-truth``), same budget;
* ``logreg``     -- logistic regression on A's log-normalised expression (the classical anchor).

Every model is read on the whole B test split and on A's held-out cells (forgetting) twice: greedy
reasoning with the parsed answer, and the fast answer-only labels ``annotate`` gives by default,
with prompts ranked within the model's gene panel exactly as ``adapt``/``annotate`` rank them.

    python benchmarks/ood_adapt.py --out runs/ood --seeds 0 1 2               # full
    python benchmarks/ood_adapt.py --out runs/ood --seeds 0 --small           # CPU smoke budget
    python benchmarks/ood_adapt.py --table runs/ood                           # table only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage2_protocol import Job, cli, run  # noqa: E402  (the same job runner as the Stage-2 protocol)

PAIRS = {
    "kang2018": {"file": "kang2018_pbmc_ifnb_scgen/kang2018_scgen_valid.h5ad", "domain": "condition",
                 "A": "control", "B": "stimulated", "label": "cell_type"},
    "baron2016": {"file": "baron2016_pancreas_cider/baron_pancreas_350cells.h5ad", "domain": "Batch",
                  "A": "human", "B": "mouse", "label": "Group"},
}
METHODS = ("sft", "sft_extra", "duality", "oracle", "logreg")


# ---- data ------------------------------------------------------------------------------------


def prepare(pair: str, out: Path, data_dir: Path, test_fraction: float = 0.5) -> dict[str, Path]:
    """Write A_train / A_test (80/20) and B_pool (labels dropped) / B_pool_labelled / B_test (seed 0)."""
    import anndata as ad

    if "allow_write_nullable_strings" in dir(ad.settings):  # pandas 3 strings (anndata >= 0.12)
        ad.settings.allow_write_nullable_strings = True
    spec = PAIRS[pair]
    adata = ad.read_h5ad(data_dir / spec["file"])
    adata.obs_names_make_unique()
    adata.obs = adata.obs[[spec["domain"], spec["label"]]].astype(str)
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for domain, fraction, names in ((spec["A"], 0.2, ("A_train", "A_test")),
                                    (spec["B"], test_fraction, ("B_pool_labelled", "B_test"))):
        cells = adata[adata.obs[spec["domain"]] == domain].copy()
        order = rng.permutation(cells.n_obs)
        cut = int(round((1 - fraction) * cells.n_obs))
        for name, idx in zip(names, (np.sort(order[:cut]), np.sort(order[cut:])), strict=True):
            paths[name] = out / f"{name}.h5ad"
            cells[idx].copy().write_h5ad(paths[name])
    pool = ad.read_h5ad(paths["B_pool_labelled"])
    pool.obs = pool.obs[[]]  # the duality arm never sees a label, not even in the file
    paths["B_pool"] = out / "B_pool.h5ad"
    pool.write_h5ad(paths["B_pool"])
    return paths


def oracle_tasks(model: Path, labelled: Path, label_key: str, out: Path, seed: int) -> None:
    """The duality arm's prompts (same cells, ranking and seed) plus ``target`` = B's label: the oracle's tasks folder."""
    import anndata as ad
    from datasets import Dataset, DatasetDict

    from cellduality.adaptation.rows import build_rows, write_tasks_folder
    from cellduality.tasks import load_tasks

    cells = ad.read_h5ad(labelled)
    rows = build_rows(cells, load_tasks(model / "cellduality.json"), seed=seed)
    label = dict(zip(cells.obs_names.astype(str), cells.obs[label_key].astype(str), strict=True))
    write_tasks_folder(rows, model, out, {"data": str(labelled), "seed": seed, "oracle": True})
    targets = [json.dumps(label[row["id"].split(":", 1)[1]]) for row in rows.rows]
    DatasetDict({"train": Dataset.from_list([{**r, "target": t} for r, t in zip(rows.rows, targets, strict=True)])}
                ).save_to_disk(str(out / "rl_oracle"))


def evaluate(model: Path, cells_path: Path, label_key: str, out: Path, batch_size: int = 64,
             readout: str = "generated") -> None:
    """Annotation accuracy / macro-F1 of ``model`` on labelled cells (prompts as ``adapt`` builds them).

    ``readout="generated"``: greedy reasoning and the parsed answer (as ``evaluate`` reads a model);
    ``"fast"``: the answer-only label ranking that ``annotate`` uses by default
    (:func:`cellduality.inference.fast.classify_fast`), which always answers with a candidate.
    """
    import anndata as ad
    from sklearn.metrics import accuracy_score, f1_score

    from cellduality.adaptation.rows import build_rows
    from cellduality.inference.model import CellDualityModel

    mdl = CellDualityModel.load(model)
    cells = ad.read_h5ad(cells_path)
    task = mdl.task("annotation")
    examples = build_rows(cells, {"annotation": task}, seed=0, min_overlap=0.0).examples["annotation"]
    prompts = [task.primal_prompt(ex) for ex in examples]
    truth_of = dict(zip(cells.obs_names.astype(str), cells.obs[label_key].astype(str), strict=True))
    truth = [truth_of[ex.meta["cell_id"]] for ex in examples]
    if readout == "fast":
        from cellduality.inference.fast import classify_fast

        result = classify_fast(task, mdl, prompts, [task.split(ex) for ex in examples], batch_size=batch_size)
        if result.explained.any():
            raise RuntimeError(f"{model} has no answer-only form; its fast readout would be generated")
        guess = [str(a) for a in result.labels]
    else:
        texts = mdl.generator(max_new_tokens=256, batch_size=batch_size)(prompts)
        guess = [str(a) if (a := task.parse_primal(t)) is not None else "unparsed" for t in texts]
    parsed = [i for i, g in enumerate(guess) if g != "unparsed"]
    result = {"model": str(model), "cells": str(cells_path), "readout": readout, "n": len(truth), "n_cells": cells.n_obs,
              "accuracy": accuracy_score(truth, guess), "macro_f1": f1_score(truth, guess, average="macro"),
              "unparsed": guess.count("unparsed") / len(guess),
              "accuracy_of_parsed": float(np.mean([truth[i] == guess[i] for i in parsed])) if parsed else None,
              "answers": {ex.meta["cell_id"]: g for ex, g in zip(examples, guess, strict=True)}}
    out.write_text(json.dumps(result, indent=1))


def logreg(paths: dict[str, Path], label_key: str, out: Path) -> None:
    """Logistic regression on log1p(CP10k) of A_train's genes, tested on B_test and A_test."""
    import anndata as ad
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    def prepared(path: Path):  # noqa: ANN202
        cells = ad.read_h5ad(path)
        x = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
        if np.allclose(x, np.round(x)):  # counts: normalise; Kang's file is already log-normalised
            sc.pp.normalize_total(cells, target_sum=1e4)
            sc.pp.log1p(cells)
        return cells

    train = prepared(paths["A_train"])
    model = LogisticRegression(max_iter=2000).fit(_dense(train.X), train.obs[label_key].astype(str))
    result = {}
    for name in ("B_test", "A_test"):
        test = prepared(paths[name])[:, train.var_names]
        guess, truth = model.predict(_dense(test.X)), test.obs[label_key].astype(str)
        result[name] = {"accuracy": accuracy_score(truth, guess), "macro_f1": f1_score(truth, guess, average="macro")}
    out.write_text(json.dumps(result, indent=1))


def _dense(x):  # noqa: ANN001, ANN202
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


# ---- plan ------------------------------------------------------------------------------------


def me(*args: str | Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def plan(args: argparse.Namespace) -> list[Job]:
    jobs: list[Job] = []
    for pair in args.pair:
        base = args.out / pair
        spec = PAIRS[pair]
        base.mkdir(parents=True, exist_ok=True)
        paths = prepare(pair, base / "data", args.data_dir) if not (base / "data" / "B_test.h5ad").is_file() \
            else {p.stem: p for p in (base / "data").glob("*.h5ad")}
        results = args.out / "results" / pair
        results.mkdir(parents=True, exist_ok=True)
        prep = f"{pair}/prep"
        jobs.append(Job(prep, ["bash", "-c", " && ".join(" ".join(c) for c in [
            cli("sentences", paths["A_train"], base / "sentences", "--label-key", spec["label"], "--test-size", 0),
            cli("tasks", "build", base / "sentences", base / "tasks", "--task", "annotation", "--max-genes",
                args.max_genes, "--option", f"annotation.n_hidden={args.n_hidden}", "--option",
                f"annotation.hide={args.hide}", "--seed", 0),
            cli("teach", base / "tasks", base / "sft_data", "--n", 4)])]))
        jobs.append(Job(f"{pair}/logreg", me("--logreg", base / "data", spec["label"], results / "logreg.json")))
        recipe = ["--config", args.grpo_config] if args.grpo_config else []
        for seed in args.seeds:
            run_dir, models = base / f"seed{seed}", base / f"seed{seed}" / "models"
            run_dir.mkdir(parents=True, exist_ok=True)
            sft_cfg, extra_cfg = run_dir / "sft.yaml", run_dir / "sft_extra.yaml"
            sft_cfg.write_text(json.dumps({"model": args.preset, "epochs": args.epochs, "learning_rate": args.sft_lr,
                                           "batch_size": 16, "seed": seed, "save_steps": 100000}))
            extra_cfg.write_text(json.dumps({"model": str(models / "sft"), "epochs": args.extra_epochs,
                                             "learning_rate": args.sft_lr / 4, "batch_size": 16, "seed": seed,
                                             "save_steps": 100000}))
            sft = f"{pair}/{seed}/sft"
            jobs.append(Job(sft, cli("sft", base / "sft_data", models / "sft", "--config", sft_cfg), [prep]))
            trained = {
                "sft": (sft, None),
                "sft_extra": (f"{pair}/{seed}/sft_extra",
                              cli("sft", base / "sft_data", models / "sft_extra", "--config", extra_cfg)),
                "duality": (f"{pair}/{seed}/duality",
                            cli("adapt", models / "sft", paths["B_pool"], run_dir / "adapt", "--steps", args.steps,
                                "--seed", seed, "--diagnose-cells", args.diagnose_cells, *recipe)),
                "oracle": (f"{pair}/{seed}/oracle", ["bash", "-c", " && ".join(" ".join(c) for c in [
                    me("--oracle-tasks", models / "sft", paths["B_pool_labelled"], spec["label"],
                       run_dir / "oracle_tasks", seed),
                    cli("grpo", run_dir / "oracle_tasks", models / "oracle", "--sft-model", models / "sft",
                        "--reward", "ground-truth", "--max-steps", args.steps, "--set", f"seed={seed}", *recipe)])]),
            }
            where = {"sft": models / "sft", "sft_extra": models / "sft_extra", "duality": run_dir / "adapt" / "model",
                     "oracle": models / "oracle"}
            for method, (job_name, argv) in trained.items():
                if argv is not None:
                    jobs.append(Job(job_name, argv, [sft]))
                for split in ("B_test", "A_test"):
                    target = results / f"seed{seed}" / f"{method}_{split}.json"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    jobs.append(Job(f"{job_name}/eval_{split}", me("--evaluate", where[method], paths[split],
                                                                   spec["label"], target), [job_name]))
                    jobs.append(Job(f"{job_name}/eval_{split}_fast", me(
                        "--evaluate", where[method], paths[split], spec["label"],
                        target.with_name(f"{method}_{split}_fast.json"), "--fast"), [job_name]))
            jobs.append(Job(f"{pair}/{seed}/diagnostics", ["true"], [f"{pair}/{seed}/duality"],
                            (run_dir / "adapt" / "diagnostics.json", results / f"seed{seed}" / "diagnostics.json")))
    return jobs


# ---- table -----------------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    pct = 100 * np.asarray(values)
    return f"{pct.mean():.1f} ± {pct.std(ddof=1):.1f}" if len(pct) > 1 else f"{pct.mean():.1f}"


def table(out: Path) -> str:
    """Markdown: per pair and method, accuracy / macro-F1 on B test and accuracy on A test (mean ± std over seeds).

    One table per readout: the greedy generated answers (``<method>_<split>.json``) and, where
    they were measured, the fast answer-only labels that ``annotate`` gives (``*_fast.json``).
    """
    lines = []
    for pair_dir in sorted((out / "results").iterdir()):
        if not pair_dir.is_dir() or pair_dir.name == "logs":
            continue
        seeds = sorted(p for p in pair_dir.glob("seed*") if p.is_dir())
        spec = PAIRS[pair_dir.name]
        lines += [f"**{pair_dir.name}: {spec['A']} → {spec['B']}** ({len(seeds)} seed(s))", ""]
        for suffix, readout in (("", "greedy generated answers"), ("_fast", "fast answer-only labels (`annotate`)")):
            if suffix and not any(any(s.glob(f"*_B_test{suffix}.json")) for s in seeds):
                continue
            lines += [f"Readout: {readout}.", "",
                      "| method | B accuracy | B macro-F1 | B accuracy of parsed answers | A accuracy (forgetting) |",
                      "|---|---|---|---|---|"]
            means: dict[str, float] = {}
            for method in METHODS:
                if method == "logreg":
                    path = pair_dir / "logreg.json"
                    if not path.is_file():
                        continue
                    r = json.loads(path.read_text())
                    lines.append(f"| logreg (trained on A) | {_ms([r['B_test']['accuracy']])} | "
                                 f"{_ms([r['B_test']['macro_f1']])} | – | {_ms([r['A_test']['accuracy']])} |")
                    continue
                b = [json.loads(p.read_text()) for s in seeds if (p := s / f"{method}_B_test{suffix}.json").is_file()]
                a = [json.loads(p.read_text()) for s in seeds if (p := s / f"{method}_A_test{suffix}.json").is_file()]
                if not b:
                    continue
                means[method] = float(np.mean([r["accuracy"] for r in b]))
                parsed = [r["accuracy_of_parsed"] for r in b if r.get("accuracy_of_parsed") is not None]
                lines.append(f"| {method} | {_ms([r['accuracy'] for r in b])} | {_ms([r['macro_f1'] for r in b])} | "
                             f"{_ms(parsed) if len(parsed) == len(b) else '–'} | {_ms([r['accuracy'] for r in a])} |")
            if {"sft", "duality", "oracle"} <= set(means):
                gap = means["oracle"] - means["sft"]
                closed = (f"{100 * (means['duality'] - means['sft']) / gap:.0f} %" if gap > 0
                          else "undefined (oracle ≤ SFT)")
                lines += ["", f"Duality − SFT on B: {100 * (means['duality'] - means['sft']):+.1f} points; "
                              f"share of the SFT → oracle gap closed: {closed}."]
            lines.append("")
        diag = [json.loads(p.read_text()) for s in seeds if (p := s / "diagnostics.json").is_file()]
        if diag:
            t = diag[0]["tasks"]["annotation"]
            lines += [f"Label-free diagnostics (seed {seeds[0].name[4:]}): self-consistency AUC "
                      f"{t.get('self_consistency_auc')}, zero-spread groups {t.get('zero_spread_share')}; "
                      f"“{t['verdict']}”", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--evaluate", "--oracle-tasks", "--logreg"):
        mode, rest = sys.argv[1], sys.argv[2:]
        if mode == "--evaluate":  # MODEL CELLS LABEL_KEY OUT [--fast]
            evaluate(Path(rest[0]), Path(rest[1]), rest[2], Path(rest[3]),
                     readout="fast" if rest[4:] == ["--fast"] else "generated")
        elif mode == "--oracle-tasks":
            oracle_tasks(Path(rest[0]), Path(rest[1]), rest[2], Path(rest[3]), int(rest[4]))
        else:
            data = Path(rest[0])
            logreg({p.stem: p for p in data.glob("*.h5ad")}, rest[1], Path(rest[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="only print the table of an earlier OUT")
    parser.add_argument("--pair", action="append", choices=sorted(PAIRS))
    parser.add_argument("--data-dir", type=Path, default=None, help="default: ../shared/data (CELLDUALITY_DATA_DIR)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--epochs", type=float, default=None, help="SFT epochs on A (default 8: after 3 the mini primal named 2 of Kang's 7 types; 2 with --small)")
    parser.add_argument("--extra-epochs", type=float, default=1.0)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=None, help="adaptation steps (default: the recipe's max_steps)")
    parser.add_argument("--grpo-config", type=Path, help="a GRPO recipe YAML for both duality and oracle "
                        "(default: the default recipe)")
    parser.add_argument("--max-genes", type=int, default=24)
    parser.add_argument("--n-hidden", type=int, default=6)
    parser.add_argument("--hide", default="interleaved", help="the dual's hiding strategy (annotation.hide); "
                        "rare with --n-hidden 12: docs/results.md, 'What the dual can tell'")
    parser.add_argument("--diagnose-cells", type=int, default=64)
    parser.add_argument("--small", action="store_true", help="CPU budget: tiny preset, 2 SFT epochs, 20 steps")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=1e9, help="seconds; no job starts after it")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.out is None:
        parser.error("--out is required")
    from cellduality.paths import shared_data_dir

    args.data_dir = args.data_dir or shared_data_dir()
    if args.data_dir is None:
        sys.exit("shared data not found: pass --data-dir or set CELLDUALITY_DATA_DIR")
    if args.small:
        args.preset, args.extra_epochs, args.diagnose_cells = "tiny", 0.5, 32
        args.epochs, args.steps = args.epochs or 2.0, args.steps or 20
    args.epochs = args.epochs or 8.0
    args.pair = args.pair or sorted(PAIRS)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    start = time.time()
    status = run(plan(args), args.jobs, args.out / "results" / "logs", start + args.time_limit)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": time.time() - start, "status": status}
    (args.out / "results" / "protocol.json").write_text(json.dumps(summary, indent=1))
    text = table(args.out)
    (args.out / "results" / "table.md").write_text(text)
    print(text)
    failed = {k: v for k, v in status.items() if v != "ok"}
    print(f"done in {summary['seconds']:.0f} s; {len(status) - len(failed)} ok, {len(failed)} not: {failed}")


if __name__ == "__main__":
    main()
