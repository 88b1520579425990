"""Entry point of the two-rank test (``tests/test_multiprocess.py``): the CLI, tracing each rank.

Each rank appends one JSON line per reward call to ``$CELLDUALITY_RANK_TRACE/rank<R>.jsonl``:
the reward, how many completions that rank scored and how many (prompt, x_u) pairs its dual pass
scored teacher-forced -- evidence that every rank ran its own dual pass. The CLI is otherwise
untouched: ``python -m torch.distributed.run --nproc_per_node 2 tests/_mp_entry.py sft …``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _trace_rewards() -> None:
    from cellduality import rewards

    path = Path(os.environ["CELLDUALITY_RANK_TRACE"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"

    def traced(cls):
        original = cls.__call__

        def call(self, prompts, completions, **kwargs):
            pairs: list[int] = []
            score = getattr(self, "score", None)
            if score is not None:
                self.score = lambda p, t: (pairs.append(len(p)), score(p, t))[1]
            try:
                out = original(self, prompts, completions, **kwargs)
            finally:
                if score is not None:
                    self.score = score
            with path.open("a") as f:
                f.write(json.dumps({"reward": cls.__name__, "completions": len(completions),
                                    "dual_pairs_scored": sum(pairs)}) + "\n")
            return out

        cls.__call__ = call

    for cls in (rewards.DualLikelihoodReward, rewards.GroundTruthReward):
        traced(cls)


def _accept_every_answer(tasks_dir: str) -> None:
    """An untrained tiny model never writes a parsable answer, so its dual pass would never run:
    read an answer out of any text (as ``benchmarks/bench_grpo.py --force-dual`` does)."""
    import zlib

    from cellduality.tasks import load_tasks
    from cellduality.tasks.annotation import AnnotationTask
    from cellduality.tasks.generation import GenerationTask

    tasks = load_tasks(tasks_dir)
    labels, genes = tasks["annotation"].context.labels, sorted(tasks["generation"].context.genes)
    AnnotationTask.parse_primal = lambda self, text: labels[zlib.crc32(text.encode()) % len(labels)]
    GenerationTask.parse_primal = lambda self, text: [genes[(zlib.crc32(text.encode()) + i) % len(genes)]
                                                      for i in range(8)]


if __name__ == "__main__":
    _trace_rewards()
    if sys.argv[1] == "grpo":
        _accept_every_answer(sys.argv[2])
    from cellduality.cli.main import main

    main(sys.argv[1:])
