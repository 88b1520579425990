"""Can a reward teach anything? Label-free diagnostics to run *before* spending compute on RL.

GRPO normalises rewards within the group of G completions of one prompt, so everything constant
for a prompt cancels: a reward can only teach through how it ranks *different answers to the same
input*. Three figures say whether it can:

* **right-vs-wrong AUC** (same example): the reward of the reference answer against that of a
  wrong candidate for the same input (another label; for generative tasks, a real cell of another
  type or perturbation). 0.5 means the reward cannot tell them apart, whatever else it does.
* **own-answer AUC**: the reward of the policy's own sampled answers against their correctness
  (classification tasks; for generative tasks the Spearman correlation with the ground-truth score).
* **zero-spread share**: the share of groups of G sampled answers whose rewards are all equal --
  those groups give GRPO no gradient at all.

All three run the reward objects GRPO uses (:mod:`cellduality.rewards`), with the model doing
the dual exactly as the live policy would. Correctness (second figure) reads the test labels;
the first and third need only the model and the task's candidate set.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.rewards import DUAL_REWARDS, DualRewardMode
from cellduality.tasks.base import Task, format_response, loads


def make_duality_reward(tasks: Mapping[str, Task], mode: DualRewardMode, model: Any, tokenizer: Any, *,
                        dual_max_new_tokens: int = 256, temperature: float = 1.0, calibrate: bool = False) -> Any:
    """The duality reward of ``mode`` backed by ``model`` (outside a trainer: diagnostics, inference)."""
    from cellduality.models import make_generate_fn
    from cellduality.models.scoring import make_score_fn
    from cellduality.rewards import DualityReward, DualLikelihoodReward
    from cellduality.tasks.base import gene_vocabulary

    if mode == "likelihood":
        return DualLikelihoodReward(tasks, make_score_fn(model, tokenizer), temperature=temperature,
                                    calibrate=calibrate)
    if mode == "paper":
        return DualityReward(tasks, make_generate_fn(model, tokenizer, max_new_tokens=dual_max_new_tokens,
                                                     batch_size=64, genes=gene_vocabulary(tasks)))
    raise CellDualityError(f"Unknown duality reward '{mode}'; choose one of: {', '.join(DUAL_REWARDS)}.")


def _columns(rows: Sequence[Mapping[str, Any]], repeat: int = 1) -> dict[str, list[Any]]:
    return {key: [row[key] for row in rows for _ in range(repeat)] for key in ("task", "known", "unknown", "seed")}


def _wrong_answer(task: Task, row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], rng: random.Random) -> Any:
    """A wrong answer to ``row``'s input: another candidate label, or another x_u's reference output."""
    target = loads(row["target"])
    candidates = task.answer_candidates()
    if candidates:
        others = [c for c in candidates if task.ground_truth_score(target, c) < 1.0]
        return rng.choice(others) if others else None
    unknown = loads(row["unknown"])
    others = [r for r in rows if task.distance(unknown, loads(r["unknown"])) > 0]
    return loads(rng.choice(others)["target"]) if others else None


def _auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(positive > negative) + 0.5 P(tie) over all pairs (Mann-Whitney); None without both."""
    if not positive or not negative:
        return None
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(positive, negative).statistic) / (len(positive) * len(negative))


def right_vs_wrong(task: Task, rows: Sequence[Mapping[str, Any]], reward: Any, seed: int = 0) -> dict[str, Any]:
    """Paired AUC of the reward for the reference answer vs a wrong one, on the same inputs."""
    rng = random.Random(seed)
    completions, used = [], []
    for row in rows:
        wrong = _wrong_answer(task, row, rows, rng)
        if wrong is None:
            continue
        right = loads(row["target"])
        completions += [format_response("", task.render_answer(right)), format_response("", task.render_answer(wrong))]
        used.append(row)
    if not used:
        return {"n": 0, "right_vs_wrong_auc": None}
    rewards = reward([""] * len(completions), completions, **_columns(used, repeat=2))
    right, wrong = rewards[0::2], rewards[1::2]
    wins = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r, w in zip(right, wrong, strict=True))
    return {
        "n": len(used),
        "right_vs_wrong_auc": wins / len(used),
        "mean_reward_right": sum(right) / len(right),
        "mean_reward_wrong": sum(wrong) / len(wrong),
    }


def reward_preference(task: Task, rows: Sequence[Mapping[str, Any]], reward: Any) -> dict[str, Any]:
    """Where the reward pulls a classification task: its value for *every* candidate label per input.

    GRPO moves the policy towards the answers the reward ranks highest, so with a reward that is a
    posterior over the candidates (the likelihood duality reward) the label it prefers for a cell
    is where adaptation takes that cell, and how far that posterior is from flat says how much the
    dual reads the label at all. Needs no label: ``row["target"]`` is only compared with, as the
    answer the model gives now (the pseudo rows of the label-free diagnostics). Returns
    ``{}`` for tasks with fewer than two candidates.
    """
    import numpy as np

    keys = [task.render_answer(c) for c in task.answer_candidates()]
    if len(keys) < 2 or not rows:
        return {}
    completions = [format_response("", key) for _ in rows for key in keys]
    values = np.asarray(reward([""] * len(completions), completions, **_columns(rows, repeat=len(keys))),
                        dtype=float).reshape(len(rows), len(keys))
    preferred = values.argmax(1)
    current = [task.render_answer(loads(row["target"])) for row in rows]
    counts: dict[str, int] = {}
    for index in preferred:
        counts[keys[index]] = counts.get(keys[index], 0) + 1
    return {
        "reward_top_mean": float(values.max(1).mean()),
        "reward_flat": 1.0 / len(keys),
        "reward_prefers_other_share": float(np.mean([keys[i] != c for i, c in zip(preferred, current, strict=True)])),
        "reward_preferred": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
    }


def own_answers(task: Task, rows: Sequence[Mapping[str, Any]], reward: Any, generate: Any,
                num_generations: int) -> dict[str, Any]:
    """Sample G answers per prompt; reward vs correctness AUC and the share of zero-spread groups."""
    prompts = [row["prompt"] for row in rows for _ in range(num_generations)]
    completions = generate(prompts)
    rewards = reward(prompts, completions, **_columns(rows, repeat=num_generations))
    answers = [task.parse_primal(text) for text in completions]
    truth = [task.ground_truth_score(loads(row["target"]), answer) if answer is not None else 0.0
             for row, answer in zip([r for r in rows for _ in range(num_generations)], answers, strict=True)]
    groups = [rewards[i:i + num_generations] for i in range(0, len(rewards), num_generations)]
    out: dict[str, Any] = {
        "n_prompts": len(rows),
        "num_generations": num_generations,
        "zero_spread_share": sum(max(g) - min(g) < 1e-9 for g in groups) / len(groups),
        "mean_reward": sum(rewards) / len(rewards),
        "sampled_ground_truth_score": sum(truth) / len(truth),
        "malformed_share": sum(a is None for a in answers) / len(answers),
    }
    if task.kind == "classification":
        out["own_answer_auc"] = _auc([r for r, t in zip(rewards, truth, strict=True) if t >= 1.0],
                                     [r for r, t in zip(rewards, truth, strict=True) if t < 1.0])
    else:
        from scipy.stats import spearmanr

        rho = spearmanr(rewards, truth).statistic if len(set(rewards)) > 1 and len(set(truth)) > 1 else None
        out["own_answer_spearman"] = None if rho is None or rho != rho else float(rho)
    return out


def diagnose_rewards(model_dir: str | Path, tasks_dir: str | Path, *, mode: DualRewardMode = "likelihood",
                     split: str = "test", max_examples: int = 200, num_generations: int = 8,
                     temperature: float = 1.0, max_completion_length: int = 192, seed: int = 0,
                     likelihood_temperature: float = 1.0, likelihood_calibration: bool = False,
                     only: Sequence[str] | None = None) -> dict[str, Any]:
    """Per task: right-vs-wrong AUC, own-answer AUC (or Spearman) and zero-spread share.

    Uses the ``primal`` rows of ``split`` in ``tasks_dir`` (their ``target`` only for the wrong
    candidates of generative tasks and for the correctness figure). ``max_examples`` caps the
    prompts per task (seeded choice); ``num_generations`` and ``temperature`` should match the
    GRPO settings whose groups you want to predict.
    """
    from cellduality.models import load_model, make_generate_fn
    from cellduality.models.loading import inference_device
    from cellduality.tasks.builders import load_task_datasets, load_tasks

    if max_examples < 1 or num_generations < 2 or temperature <= 0:
        raise CellDualityError("max_examples must be >= 1, num_generations >= 2 and temperature > 0.")
    tasks = load_tasks(tasks_dir)
    data = load_task_datasets(tasks_dir, "primal")
    if split not in data:
        raise CellDualityError(f"{tasks_dir}/primal has no '{split}' split (has {sorted(data)}).")
    model, tokenizer = load_model(model_dir, device=inference_device())
    reward = make_duality_reward(tasks, mode, model, tokenizer, temperature=likelihood_temperature,
                                 calibrate=likelihood_calibration)
    generate = make_generate_fn(model, tokenizer, max_new_tokens=max_completion_length, do_sample=True,
                                temperature=temperature, batch_size=128, seed=seed)
    report: dict[str, Any] = {"model": str(model_dir), "tasks_dir": str(tasks_dir), "reward": mode, "split": split,
                              "temperature": temperature, "num_generations": num_generations,
                              "likelihood_calibration": likelihood_calibration, "tasks": {}}
    rows_all = data[split]
    for name, task in tasks.items():
        if only and name not in only:
            continue
        rows = [r for r in rows_all if r["task"] == name]
        if not rows:
            continue
        rng = random.Random(seed)
        if len(rows) > max_examples:
            rows = rng.sample(rows, max_examples)
        result = {"kind": task.kind, **right_vs_wrong(task, rows, reward, seed)}
        result.update(own_answers(task, rows, reward, generate, num_generations))
        report["tasks"][name] = result
    if not report["tasks"]:
        raise CellDualityError(f"No rows of the requested tasks in {tasks_dir}/primal[{split}].")
    return report
