"""Two CPU ranks (gloo, ``torch.distributed.run``) for SFT, GRPO with the duality reward and GRPO
with the oracle, on the ``tiny`` preset: both ranks take part, only the main process prints and
writes, the result loads, and the duality reward's dual pass runs on every rank. Slow (~1-2 min)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ENTRY = Path(__file__).with_name("_mp_entry.py")


def two_ranks(args: list, trace: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the CLI on two CPU ranks (gloo) through ``tests/_mp_entry.py``."""
    trace.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLDUALITY_RANK_TRACE": str(trace), "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ENTRY), *map(str, args)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _ranks(trace: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(trace.glob("rank*.jsonl"))}


@pytest.fixture(scope="module")
def sft_data(tasks_dir, tmp_path_factory):  # noqa: F811
    from cellduality.teacher import TeachConfig, build_sft

    out = tmp_path_factory.mktemp("mp") / "sft_data"
    build_sft(tasks_dir, out, TeachConfig(n=2, max_examples=12))
    return out


def test_sft_on_two_ranks_splits_the_rows_and_prints_once(sft_data, tmp_path):
    from datasets import load_from_disk

    from cellduality.inference import CellDualityModel

    out = tmp_path / "sft"
    result = two_ranks(["sft", sft_data, out, "--model", "tiny", "--epochs", "1", "--set", "batch_size=2"], tmp_path / "trace")
    rows = len(load_from_disk(str(sft_data))["train"])
    summary = json.loads((out / "sft_summary.json").read_text())
    # 2 ranks x 2 rows per step: one epoch takes half the steps one process would
    assert summary["steps"] == math.ceil(rows / 4) < math.ceil(rows / 2)
    assert result.stdout.count("SFT done") == 1
    assert CellDualityModel.load(out).task("annotation").context.labels


@pytest.mark.parametrize("reward", ["duality", "ground-truth"])
def test_grpo_on_two_ranks_runs_the_reward_on_every_rank(sft_dir, tasks_dir, tmp_path, reward):  # noqa: F811
    from cellduality.inference import CellDualityModel

    out, trace = tmp_path / "grpo", tmp_path / "trace"
    result = two_ranks(["grpo", tasks_dir, out, "--sft-model", sft_dir, "--reward", reward, "--max-steps", "2",
                        "--set", "num_generations=4", "--set", "prompts_per_step=2",
                        "--set", "max_completion_length=24", "--set", "dual_reward=likelihood",
                        "--set", "save_steps=100"], trace)
    ranks = _ranks(trace)
    assert set(ranks) == {"rank0", "rank1"}
    name = "DualLikelihoodReward" if reward == "duality" else "GroundTruthReward"
    for calls in ranks.values():
        assert calls and all(c["reward"] == name for c in calls)
        assert sum(c["completions"] for c in calls) == 2 * 4 * 2 / 2  # 2 steps x 8 completions, half per rank
        if reward == "duality":  # the dual pass (teacher-forced) ran on this rank's own completions
            assert all(c["dual_pairs_scored"] > 0 for c in calls)
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2
    assert CellDualityModel.load(out).task("annotation")
    assert result.stdout.count("Done:") == 1 and result.stdout.count(f"GRPO ({reward} reward)") == 1  # rank 0 reports
