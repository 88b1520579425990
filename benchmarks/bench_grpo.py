"""GRPO speed on CPU: seconds per step and the share of the step spent in the duality reward.

Runs a few GRPO steps (TRL GRPOTrainer via ``cellduality.training.grpo.run_grpo``) of the ~25M
``small`` preset on tasks built from scanpy's bundled pbmc68k_reduced, G = 8, and prints the
step-time breakdown that ``metrics.json`` records.

An untrained model never writes a parsable answer, so on its own the dual pass would never run
and the reward share would read ~0. By default (``--force-dual``) every primal completion is
accepted as well-formed (with an answer drawn from its text), so every completion triggers a dual
prompt; identical dual prompts are generated once (greedy decoding). Dual answers run to
``--dual-tokens`` tokens (an untrained model never stops early). The first step (warm-up) is
excluded from the figures.

    python benchmarks/bench_grpo.py --steps 4   (from the repo root, in its virtual environment)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def build_inputs(root: Path, preset: str) -> tuple[Path, Path]:
    from collections import Counter

    import numpy as np
    import scanpy as sc
    from datasets import load_from_disk

    from cellduality.models import load_model, save_cellduality_model
    from cellduality.tasks import build_task_datasets

    adata = sc.datasets.pbmc68k_reduced()
    matrix, names = adata.raw.X, np.asarray(adata.raw.var_names)
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    sentences = [" ".join(str(names[j]).upper() for j in np.argsort(-row, kind="stable")[:64] if row[j] > 0)
                 for row in matrix]

    class Cells:  # the attributes of cellduality.sentences.CellSentenceDataset the builders read
        pass

    cells = Cells()
    cells.sentences, cells.obs = sentences, adata.obs.astype(str)
    cells.meta = {"default_label_key": "bulk_labels", "source": "pbmc68k_reduced"}
    cells.vocabulary = dict(Counter(g for s in sentences for g in set(s.split())))
    order = np.random.default_rng(0).permutation(len(sentences))
    cells.splits = {"train": sorted(order[:560].tolist()), "test": sorted(order[560:].tolist())}
    tasks = root / "tasks"
    build_task_datasets(cells, ["annotation", "generation"], tasks, max_genes=32, seed=0, max_examples=64)
    primal = load_from_disk(str(tasks / "primal"))["train"]
    model, tokenizer = load_model(preset, tokenizer_texts=list(primal["prompt"]) + list(primal["answer"]),
                                  genes=cells.vocabulary)
    sft = root / "sft"
    save_cellduality_model(model, tokenizer, sft, {"stage": "sft", "base_model": preset}, lineage_dir=tasks)
    return tasks, sft


def force_dual(tasks_dir: Path) -> None:
    """Accept every primal completion, so the dual pass runs for all of them.

    The accepted answer is drawn from the completion text (a label out of the task's label set;
    32 genes out of the vocabulary), so answers vary within a group as a policy's would.
    """
    import zlib

    from cellduality.tasks import load_tasks
    from cellduality.tasks.annotation import AnnotationTask
    from cellduality.tasks.generation import GenerationTask

    tasks = load_tasks(tasks_dir)
    labels = tasks["annotation"].context.labels
    genes = sorted(tasks["generation"].context.genes)
    AnnotationTask.parse_primal = lambda self, text: labels[zlib.crc32(text.encode()) % len(labels)]
    GenerationTask.parse_primal = lambda self, text: [genes[(zlib.crc32(text.encode()) + 7 * i) % len(genes)]
                                                      for i in range(32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="max completion length (rollouts)")
    parser.add_argument("--dual-tokens", type=int, default=64, help="max new tokens of a dual answer")
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--no-force-dual", dest="force", action="store_false")
    parser.add_argument("--dual-reward", choices=("likelihood", "paper"), default="likelihood",
                        help="likelihood: one teacher-forced pass (default); paper: generated dual answers")
    args = parser.parse_args()

    from cellduality.models import count_parameters, load_model
    from cellduality.training.grpo import GRPOSettings, run_grpo
    from cellduality.training.grpo_metrics import timing_summary

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        root = Path(tmp)
        tasks, sft = build_inputs(root, args.preset)
        if args.force:
            force_dual(tasks)
        settings = GRPOSettings(num_generations=args.generations, prompts_per_step=args.prompts,
                                max_steps=args.steps + 1, max_completion_length=args.tokens,
                                dual_max_new_tokens=args.dual_tokens, beta=args.beta, learning_rate=1e-5,
                                dual_reward=args.dual_reward,
                                save_steps=10_000)
        start = time.perf_counter()
        metrics = run_grpo(tasks, root / "out", sft, settings)
        total = time.perf_counter() - start
        params = count_parameters(load_model(sft)[0])
        timed = timing_summary(metrics["steps"][1:])  # without the warm-up step
    history = metrics["history"][1:]
    print(json.dumps({
        "preset": args.preset, "parameters": params, "G": args.generations, "prompts_per_step": args.prompts,
        "completion_tokens": args.tokens, "dual_tokens": args.dual_tokens, "beta": args.beta,
        "forced_dual": args.force, "dual_reward": args.dual_reward, "steps_timed": timed["steps_timed"],
        "seconds_per_step": round(timed["seconds_per_step"], 3),
        "reward_time_fraction": round(timed["reward_time_fraction"], 3),
        "fractions": {k: round(v, 3) for k, v in timed["fraction"].items()},
        "mean_completion_length": sum(h.get("completions/mean_length", 0) for h in history) / max(1, len(history)),
        "dual_answers_per_step": args.generations * args.prompts if args.force else None,
        "run_seconds_including_setup": round(total, 1),
    }, indent=1))
    print(f"{timed['seconds_per_step']:.2f} s/step; duality reward {timed['reward_time_fraction']:.1%} of step wall "
          f"time (dual pass [{args.dual_reward}] {timed['fraction']['dual_generation']:.1%}, rollouts "
          f"{timed['fraction']['rollout_generation']:.1%}) -- contended shared CPU, compare ratios not seconds")


if __name__ == "__main__":
    main()
