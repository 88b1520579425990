"""What copy-aware decoding costs: time to write the reasoning of N test cells, with and without it.

    python benchmarks/bench_copy_aware.py qs/models/sft qs/data/pbmc68k_reduced/tasks --cells 48 --repeats 2

Greedy decoding of annotation prompts from the test split, one batch, the teacher's training
frequencies refitted from TASKS_DIR (as ``evaluate --copy-aware`` does). Prints seconds per run.
"""

from __future__ import annotations

import argparse
import time

from cellduality.faithfulness import copy_aware_decoding, training_knowledge
from cellduality.models import load_model, make_generate_fn
from cellduality.tasks.base import gene_vocabulary
from cellduality.tasks.builders import load_task_datasets, load_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("tasks_dir")
    parser.add_argument("--task", default="annotation")
    parser.add_argument("--cells", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    tasks = load_tasks(args.tasks_dir)
    rows = [r for r in load_task_datasets(args.tasks_dir, "primal")["test"] if r["task"] == args.task][: args.cells]
    prompts = [r["prompt"] for r in rows]
    model, tokenizer = load_model(args.model)
    knowledge = training_knowledge(args.tasks_dir, tasks)
    modes = {"as trained": {"genes": gene_vocabulary(tasks)}, "copy-aware": copy_aware_decoding(tasks, knowledge)}
    for repeat in range(args.repeats):
        for name, kwargs in modes.items():
            generate = make_generate_fn(model, tokenizer, max_new_tokens=args.max_new_tokens,
                                        batch_size=len(prompts), **kwargs)
            start = time.perf_counter()
            generate(prompts)
            print(f"run {repeat}: {name:10s} {time.perf_counter() - start:6.2f} s for {len(prompts)} cells", flush=True)


if __name__ == "__main__":
    main()
