"""Can the duality reward help on *these* cells? Label-free diagnostics printed before adaptation.

The labelled diagnostics (:mod:`cellduality.evaluation.reward_diagnostics`) compare the reward
of the right answer with a wrong one; a user's cells have no right answer. What can be measured
without labels, with the same reward objects GRPO will use:

* **self-consistency AUC**: for each cell, the reward of the model's own greedy answer against
  that of a random *other* candidate (paired, same cell). GRPO can only move the policy where the
  reward ranks answers to the same cell differently; 0.5 means it ranks the model's answer no
  better than any other label, so there is no signal to learn from (below 0.6: say so plainly).
  A high value is necessary, not sufficient: the reward may agree with a wrong model.
* **zero-spread share**: the share of groups of G sampled answers (the recipe's G and
  temperature) whose rewards are all equal -- groups that give GRPO no gradient at all.
* **agreement**: the share of sampled answers equal to the greedy one (1.0: sampling explores
  nothing, every group is zero-spread).
* **where the reward pulls** (classification, likelihood reward): the reward of every candidate
  label for each cell. Its mean top value against a flat ``1/K`` says whether the dual reads the
  label at all (on Kang 2018 one SFT seed's dual gave the true label 0.149 against a flat 0.143,
  and its favourite label was right for 25 % of cells, below the majority class: duality RL can
  only pull such a model towards a worse classifier, docs/results.md); the share of cells whose
  preferred label differs from the model's answer, and the labels it prefers, say where
  adaptation would take the model -- a user can judge that against what they know of their cells.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from cellduality.tasks.base import Example, Task, dumps

MIN_AUC = 0.6
"""Below this self-consistency AUC the reward barely separates answers: adaptation is unlikely to help."""
MAX_ZERO_SPREAD = 0.5
"""Above this share of zero-spread groups most GRPO steps carry no gradient."""
MIN_SHARPNESS = 1.5
"""The reward's favourite label must average at least this multiple of a flat ``1/K`` posterior, or
the dual hardly reads the label: the reward differs between answers by noise."""


def _pseudo_rows(task: Task, examples: list[Example], answers: list[Any]) -> list[dict[str, Any]]:
    """RL rows whose ``target`` is the model's own greedy answer (examples without one are left out)."""
    from cellduality.tasks.builders import rl_row

    return [{**rl_row(task, ex), "target": dumps(answer)} for ex, answer in zip(examples, answers, strict=True)
            if answer is not None]


def label_free_diagnostics(model: Any, tasks: Mapping[str, Task], examples: Mapping[str, list[Example]], *,
                           settings: Any, max_examples: int = 64, seed: int = 0) -> dict[str, Any]:
    """Per task: self-consistency AUC, zero-spread share, agreement and malformed share.

    ``model`` is a :class:`~cellduality.inference.model.CellDualityModel`; ``settings`` the
    :class:`~cellduality.training.grpo.GRPOSettings` of the run (G, temperature, completion
    length, which duality reward).
    """
    from cellduality.evaluation.reward_diagnostics import (
        make_duality_reward,
        own_answers,
        reward_preference,
        right_vs_wrong,
    )

    reward = make_duality_reward(tasks, settings.dual_reward, model.model, model.tokenizer,
                                 dual_max_new_tokens=settings.dual_max_new_tokens,
                                 temperature=settings.likelihood_temperature,
                                 calibrate=settings.likelihood_calibration)
    greedy = model.generator(max_new_tokens=settings.max_completion_length, batch_size=32, seed=seed,
                             copy_aware=False)  # the model's own answers
    sample = model.generator(max_new_tokens=settings.max_completion_length, do_sample=True,
                             temperature=settings.temperature, batch_size=64, seed=seed, copy_aware=False)
    report: dict[str, Any] = {"reward": settings.dual_reward, "num_generations": settings.num_generations,
                              "temperature": settings.temperature, "tasks": {}}
    for name, task_examples in examples.items():
        task = tasks[name]
        chosen = list(task_examples)
        if len(chosen) > max_examples:
            chosen = random.Random(seed).sample(chosen, max_examples)
        texts = greedy([task.primal_prompt(ex) for ex in chosen])
        answers = [task.parse_primal(t) for t in texts]
        rows = _pseudo_rows(task, chosen, answers)
        result: dict[str, Any] = {"kind": task.kind, "cells": len(chosen),
                                  "greedy_malformed_share": sum(a is None for a in answers) / len(answers)}
        if rows:
            consistency = right_vs_wrong(task, rows, reward, seed)
            sampled = own_answers(task, rows, reward, sample, settings.num_generations)
            result.update(
                self_consistency_auc=consistency["right_vs_wrong_auc"],
                mean_reward_own=consistency.get("mean_reward_right"),
                mean_reward_other=consistency.get("mean_reward_wrong"),
                zero_spread_share=sampled["zero_spread_share"],
                agreement_with_greedy=sampled["sampled_ground_truth_score"],
                sampled_malformed_share=sampled["malformed_share"],
                predicted=_counts(task, answers),
            )
            if settings.dual_reward == "likelihood" and task.kind == "classification":
                result.update(reward_preference(task, rows, reward))
        else:
            result.update(self_consistency_auc=None, zero_spread_share=None)
        result["verdict"] = verdict(name, result)
        report["tasks"][name] = result
    return report


def _counts(task: Task, answers: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is not None and task.kind == "classification":
            key = task.render_answer(answer)
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def verdict(name: str, result: Mapping[str, Any]) -> str:
    """One plain line: can the reward help this task on these cells?"""
    auc, spread = result.get("self_consistency_auc"), result.get("zero_spread_share")
    if auc is None:
        return (f"{name}: the model gave no parseable answer to these cells, so the reward has nothing to rank; "
                "adaptation cannot help (check gene identifiers, or the model).")
    top, flat = result.get("reward_top_mean"), result.get("reward_flat")
    if top is not None and flat and top < MIN_SHARPNESS * flat:
        return (f"{name}: the reward cannot help here: the dual hardly reads the label (its favourite label "
                f"averages {top:.3f}, a flat guess {flat:.3f}), so rewards differ between answers by little more "
                "than noise; adaptation is unlikely to improve this task.")
    if auc < MIN_AUC:
        return (f"{name}: the reward cannot help here: it ranks the model's own answer over another label only "
                f"{auc:.2f} of the time (AUC < {MIN_AUC}); adaptation is unlikely to improve this task.")
    if spread is not None and spread > MAX_ZERO_SPREAD:
        return (f"{name}: the reward separates answers (AUC {auc:.2f}) but {spread:.0%} of sampled groups have no "
                "reward spread (no gradient); raise temperature or num_generations, or expect little change.")
    # Not "adaptation will help": on Kang 2018 (AUC 0.67-0.82 on 3 seeds) it did not (docs/results.md).
    pull = ""
    if result.get("reward_preferred"):
        favourites = ", ".join(f"{k} {v}" for k, v in list(result["reward_preferred"].items())[:3])
        pull = (f" It prefers another label than the model's for {result['reward_prefers_other_share']:.0%} "
                f"of cells (its favourites: {favourites}): that is where adaptation will pull.")
    return (f"{name}: the reward separates the model's answer from other labels (AUC {auc:.2f}; "
            f"{spread or 0:.0%} zero-spread groups): adaptation can move the model, but this does not show it "
            f"will be more accurate (without labels nothing here can); check on a few labelled cells.{pull}")
