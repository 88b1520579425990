"""`evaluate` end to end on small real data (pbmc68k_reduced) with a scripted generator, and reports."""

from __future__ import annotations

import json
import math
import random

import pytest

from cellduality.errors import CellDualityError


@pytest.fixture(scope="module")
def tasks_dir(pbmc_small, tmp_path_factory):
    from cellduality.sentences import build_cell_sentences
    from cellduality.tasks import build_task_datasets

    root = tmp_path_factory.mktemp("eval")
    build_cell_sentences(pbmc_small, label_keys=["bulk_labels"], top_k=64, seed=0).save(root / "sent")
    build_task_datasets(root / "sent", ["annotation", "generation"], root / "tasks", max_examples=120)
    return root / "tasks"


def _scripted(tasks_dir, right=0.8, seed=0):
    """Answers a test prompt with its reference 80% of the time, otherwise garbage or a wrong label."""
    from datasets import load_from_disk

    from cellduality.tasks import format_response, load_tasks

    primal = load_from_disk(str(tasks_dir / "primal"))["test"]
    answers = dict(zip(primal["prompt"], primal["answer"], strict=True))
    labels = load_tasks(tasks_dir)["annotation"].context.labels
    rng = random.Random(seed)

    def generate(prompts):
        out = []
        for p in prompts:
            roll = rng.random()
            if p in answers and roll < right:
                out.append(format_response("because", answers[p]))
            elif roll < (1 + right) / 2:
                out.append("no answer block at all")
            else:
                out.append(format_response("guess", rng.choice(labels)))
        return out

    return generate


def test_evaluate_writes_every_output(tasks_dir, tmp_path):
    from cellduality.evaluation.evaluate import evaluate_generate

    out = tmp_path / "out"
    results = evaluate_generate(_scripted(tasks_dir), tasks_dir, out, seed=0)
    for name in ("metrics.json", "baselines.json", "report.md", "predictions_annotation.csv",
                 "predictions_generation.csv", "confusion_annotation.png", "embedding_generation.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == {"annotation", "generation"}
    ann = results["annotation"]
    # ~80% right, the rest malformed or random labels (counted, never dropped)
    assert 0.6 < ann["accuracy"] < 0.95 and ann["malformed_rate"] > 0.03
    assert 0 <= ann["reward_auc_contrast"] <= 1
    gen = results["generation"]
    assert set(f"knn@{k}" for k in (3, 5, 10, 25)) <= set(gen) and gen["gw"] >= 0
    assert gen["valid_rate"] < 1.0
    base = json.loads((out / "baselines.json").read_text())
    assert base["annotation"]["logreg"]["accuracy"] > 0.5
    # the ceiling baseline (real cell of the asked type) beats the floor (any type) at k-NN accuracy
    assert base["generation"]["real_cell_same_type"]["knn@10"] > base["generation"]["real_cell_any_type"]["knn@10"]
    report = (out / "report.md").read_text()
    assert "| model |" in report and "baseline: logreg" in report and "Acc. (%) ↑" in report
    assert not list(tmp_path.glob(".out.tmp-*"))  # no half-written folder left behind
    # the answering throughput, without start-up or scoring, per task
    timing = json.loads((out / "run.json").read_text())["timing"]
    assert {name: t["examples"] for name, t in timing.items()} == {n: r["n"] for n, r in results.items()}
    assert all(t["answer_seconds"] > 0 and t["examples_per_second"] > 0 for t in timing.values())


def test_evaluate_is_deterministic_and_handles_all_malformed(tasks_dir, tmp_path):
    from cellduality.evaluation.evaluate import evaluate_generate

    a = evaluate_generate(_scripted(tasks_dir), tasks_dir, tmp_path / "a", max_examples=30, baselines=False)
    b = evaluate_generate(_scripted(tasks_dir), tasks_dir, tmp_path / "b", max_examples=30, baselines=False)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    bad = evaluate_generate(lambda ps: ["nothing"] * len(ps), tasks_dir, tmp_path / "c", max_examples=20,
                            baselines=False)
    assert bad["annotation"]["accuracy"] == 0.0 and bad["annotation"]["malformed_rate"] == 1.0
    assert bad["generation"]["valid_rate"] == 0.0 and bad["generation"]["knn@3"] == 0.0
    assert math.isnan(bad["generation"]["gw"]) and math.isnan(bad["annotation"]["reward_auc"])
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["generation"]["gw"] is None


def test_a_raising_parser_is_a_bug_not_a_malformed_answer(tasks_dir, tmp_path, monkeypatch):
    """Parsers of model output return None for any malformed text; one that raises stops the run."""
    from cellduality.evaluation.evaluate import evaluate_generate
    from cellduality.tasks.annotation import AnnotationTask

    def broken(self, text):  # noqa: ANN001, ANN202
        raise KeyError("bug in parse_primal")

    monkeypatch.setattr(AnnotationTask, "parse_primal", broken)
    with pytest.raises(KeyError, match="bug in parse_primal"):
        evaluate_generate(_scripted(tasks_dir), tasks_dir, tmp_path / "x", max_examples=5, baselines=False,
                          tasks=["annotation"])
    assert not (tmp_path / "x").exists()


def test_evaluate_rejects_unknown_task(tasks_dir, tmp_path):
    from cellduality.evaluation.evaluate import evaluate_generate

    with pytest.raises(CellDualityError, match="not in"):
        evaluate_generate(lambda ps: ps, tasks_dir, tmp_path / "x", tasks=["perturbation"])


def test_evaluate_model_rejects_non_model_folder(tasks_dir, tmp_path):
    from cellduality.evaluation.evaluate import evaluate_model

    with pytest.raises(CellDualityError):
        evaluate_model(tmp_path / "missing", tasks_dir, tmp_path / "out")


def test_comparison_report_mean_std_and_gap_closed(tmp_path):
    from cellduality.evaluation.reports import write_comparison_report

    def run(acc, fid, auc=None):
        ann = {"accuracy": acc, "macro_f1": acc - 0.05}
        if auc is not None:
            ann["reward_auc"] = auc
        return {"annotation": ann, "perturbation": {"scfid": fid, "mmd": fid / 2}}

    results = {"sft": [run(0.80, 0.045), run(0.82, 0.047)],
               "duality": [run(0.86, 0.038, 0.7), run(0.86, 0.040, 0.8)],
               "oracle": [run(0.90, 0.025), run(0.92, 0.027)]}
    content = write_comparison_report(results, tmp_path, baselines={"annotation": {"logreg": {"accuracy": 0.87}}})
    assert content["gap_closed"]["annotation"]["accuracy"] == pytest.approx((0.86 - 0.81) / (0.91 - 0.81))
    assert content["gap_closed"]["perturbation"]["scfid"] == pytest.approx((0.039 - 0.046) / (0.026 - 0.046))
    acc = content["summary"]["annotation"]["accuracy"]["sft"]
    assert acc["mean"] == pytest.approx(0.81) and acc["std"] == pytest.approx(0.0141421, rel=1e-4)
    text = (tmp_path / "comparison.md").read_text()
    assert "81.00 ± 1.41" in text and "Gap closed" in text and "baseline: logreg" in text and "AUC" in text
    assert json.loads((tmp_path / "comparison.json").read_text())["summary"]


def test_reward_auc_contrast_is_the_paired_auc_of_diagnose(tasks_dir, tmp_path):
    """evaluate's right-vs-wrong figure is diagnose's paired one (GRPO only compares answers to the same
    prompt): a reward whose level varies with the example but ranks the right answer first scores 1.0
    (pooling rewards across examples would mix the levels of different inputs)."""
    import hashlib

    from datasets import load_from_disk

    from cellduality.evaluation.evaluate import evaluate_generate
    from cellduality.evaluation.reward_diagnostics import right_vs_wrong
    from cellduality.tasks import load_tasks, loads

    task = load_tasks(tasks_dir)["annotation"]

    def unit(*parts):  # a stable pseudo-random number in [0, 1)
        return int(hashlib.md5("|".join(parts).encode()).hexdigest()[:8], 16) / 16**8

    rows = [r for r in load_from_disk(str(tasks_dir / "primal"))["test"] if r["task"] == "annotation"]
    canonical = lambda known: json.dumps(loads(known), sort_keys=True)  # noqa: E731
    truth = {canonical(r["known"]): loads(r["target"]) for r in rows}

    def make(noise):
        def reward(prompts, completions, **columns):
            keys = [canonical(k) for k in columns["known"]]
            return [unit(k) + 0.01 * (task.parse_primal(c) == truth[k]) + noise * unit(k, c)
                    for c, k in zip(completions, keys, strict=True)]
        return reward

    for noise, expected in ((0.0, 1.0), (0.02, None)):
        reward = make(noise)
        results = evaluate_generate(_scripted(tasks_dir), tasks_dir, tmp_path / f"noise{noise}", seed=3,
                                    tasks=["annotation"], baselines=False, duality_reward=lambda _m, r=reward: r)
        paired = right_vs_wrong(task, rows, reward, seed=3)["right_vs_wrong_auc"]
        assert results["annotation"]["reward_auc_contrast"] == pytest.approx(paired)
        if expected is not None:
            assert paired == expected
        else:
            assert 0.55 < paired < 0.95  # noise on the scale of the right-answer bonus: imperfect, still paired
