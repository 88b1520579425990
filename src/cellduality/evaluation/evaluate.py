"""``cellduality evaluate``: run a model on the test split of a tasks folder and write the results.

:func:`evaluate_model` loads a model folder and calls :func:`evaluate_generate`, which works with
any ``generate(prompts) -> completions`` (a model, a vLLM engine, a test double). Generation is
batched and reproducible: greedy by default, seeded when sampling. Per task it writes the
predictions CSV and plots, and for all tasks ``metrics.json`` (``{task: {metric: value}}``),
``baselines.json`` and ``report.md``. Everything goes to a temporary folder that is renamed into
``OUT_DIR`` at the end, so an interrupted run never leaves a half-written result.

The reward-validity diagnostic asks whether the duality reward -- computed by the same model
as its own dual -- separates right from wrong primal answers:

* ``reward_auc``: ROC AUC of the reward between the model's correct and incorrect answers
  (classification; ``nan`` when all answers are right or all wrong);
* ``reward_auc_contrast``: the paired right-vs-wrong AUC of ``cellduality diagnose``
  (:func:`~cellduality.evaluation.reward_diagnostics.right_vs_wrong`): per example, does the
  reward rank the reference answer above a seeded wrong one *for the same input* (another
  candidate label; for generative tasks the reference output of an example with another
  condition)? Ties count one half; 0.5 is chance. Paired, because GRPO only compares answers to
  the same prompt; defined even for a perfect model;
* ``reward_spearman`` (generative tasks): rank correlation of the reward with the ground-truth
  RWJS of the model's own cells.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellduality.errors import CellDualityError
from cellduality.evaluation import metrics as M
from cellduality.evaluation.baselines import load_inverse, load_rows, run_baselines
from cellduality.evaluation.scoring import GenerativeScorer, TaskRows, score_classification
from cellduality.faithfulness import knowledge_or_none, score_responses
from cellduality.paths import atomic_dir

GenerateFn = Callable[[list[str]], list[str]]


def evaluate_model(
    model_dir: str | Path,
    tasks_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    max_examples: int | None = None,
    tasks: Sequence[str] | None = None,
    embedding: Any = None,
    baselines: bool = True,
    reward_validity: bool = True,
    overwrite: bool = True,
    split: str = "test",
    dual_reward: str = "likelihood",
    fast_labels: bool = False,
    copy_aware: bool = False,
) -> dict[str, dict[str, float]]:
    """Evaluate the model in ``model_dir`` on ``split`` (default ``test``) of ``tasks_dir``; returns metrics.json.

    ``copy_aware`` decodes the reasoning copy-aware (:func:`cellduality.faithfulness.copy_aware_decoding`),
    as inference does by default; off, the figures are the model's own.

    The figures also go into the evaluation section of the model's card (``README.md``).

    ``split="validation"`` (tasks built with ``--validation-fraction``) is where checkpoints and
    hyperparameters are chosen, so the test split is read once, for the final figures.
    """
    from cellduality.models import load_model, make_generate_fn, read_model_info
    from cellduality.models.loading import inference_device
    from cellduality.tasks import load_tasks
    from cellduality.tasks.base import gene_vocabulary

    read_model_info(model_dir)  # one-line error when it is not a CellDuality model
    model, tokenizer = load_model(model_dir, device=inference_device())
    from cellduality.faithfulness import copy_aware_decoding, knowledge_or_none

    task_map = load_tasks(tasks_dir)
    decoding = (copy_aware_decoding(task_map, knowledge_or_none(tasks_dir, task_map)) if copy_aware
                else {"genes": gene_vocabulary(task_map)})
    generate = make_generate_fn(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, batch_size=batch_size, seed=seed, **decoding)
    from cellduality.evaluation.reward_diagnostics import make_duality_reward

    def reward_for(task_map: dict[str, Any]) -> Any:  # the duality reward GRPO would use, on this model
        return make_duality_reward(task_map, dual_reward, model, tokenizer, dual_max_new_tokens=max_new_tokens)

    results = evaluate_generate(generate, tasks_dir, out_dir, seed=seed, max_examples=max_examples, tasks=tasks,
                                embedding=embedding, baselines=baselines, reward_validity=reward_validity,
                                duality_reward=reward_for,
                                batch_size=batch_size, overwrite=overwrite, split=split,
                                label_fn=fast_label_fn(model_dir, model, tokenizer, tasks_dir) if fast_labels else None,
                                run_info={"model_dir": str(model_dir), "split": split, "do_sample": do_sample,
                                          "temperature": temperature, "max_new_tokens": max_new_tokens,
                                          "fast_labels": fast_labels, "dual_reward": dual_reward,
                                          "copy_aware": copy_aware})
    from cellduality.models.card import evaluation_section, update_model_card

    # the model card's figures (only its evaluation section; the model's files are not touched)
    update_model_card(model_dir, evaluation_section(results, tasks_dir=tasks_dir, split=split, out_dir=out_dir))
    return results


def evaluate_generate(
    generate: GenerateFn,
    tasks_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    max_examples: int | None = None,
    tasks: Sequence[str] | None = None,
    embedding: Any = None,
    baselines: bool = True,
    reward_validity: bool = True,
    duality_reward: Callable[[dict[str, Any]], Any] | None = None,
    batch_size: int = 16,
    overwrite: bool = True,
    run_info: dict[str, Any] | None = None,
    split: str = "test",
    label_fn: Callable[[Any, TaskRows], list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """The model-agnostic core of :func:`evaluate_model` (``generate`` answers the prompts;
    ``label_fn(task, rows)``, when given, answers those of classification tasks instead)."""
    from cellduality.evaluation import plots
    from cellduality.evaluation.reports import write_task_report
    from cellduality.tasks import load_tasks

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CellDualityError(f"{out} already exists and is not empty; choose a new folder or allow overwriting.")
    loaded = load_tasks(tasks_dir)
    names = list(tasks or loaded)
    unknown = [n for n in names if n not in loaded]
    if unknown:
        raise CellDualityError(f"task(s) {unknown} are not in {tasks_dir}; it has: {', '.join(loaded)}.")
    inverse = load_inverse(tasks_dir)
    knowledge = knowledge_or_none(tasks_dir, loaded)  # the teacher's training frequencies, for faithfulness

    with atomic_dir(out, "evaluate") as tmp:
        results: dict[str, dict[str, float]] = {}
        scorers: dict[str, GenerativeScorer] = {}
        timing: dict[str, dict[str, float]] = {}  # answering alone, without start-up or scoring: the throughput
        for name in names:
            task = loaded[name]
            test = load_rows(tasks_dir, name, split, max_examples, seed)
            if not len(test):
                continue
            started = time.perf_counter()
            outputs = label_fn(task, test) if label_fn is not None and task.kind == "classification" \
                else _generate_all(generate, test.prompts, batch_size, f"{name}: generating")
            seconds = time.perf_counter() - started
            timing[name] = {"examples": len(test), "answer_seconds": seconds,
                            "examples_per_second": len(test) / max(seconds, 1e-9)}
            parsed = [task.parse_primal(o) for o in outputs]  # parsers never raise: one that does is a bug
            table = {"id": test.ids, "prompt": test.prompts, "output": outputs,
                     "parsed": [_text(task, p) for p in parsed], "target": [_text(task, t) for t in test.targets]}
            if task.kind == "classification":
                metrics = score_classification(test, parsed)
                table["correct"] = [float(task.ground_truth_score(t, p)) for t, p in zip(test.targets, parsed, strict=True)]
                plots.confusion_png(M.confusion(test.targets, parsed, task.context.labels or None),
                                    tmp / f"confusion_{name}.png", title=f"{name}: confusion")
            else:
                scorer = GenerativeScorer(task, load_rows(tasks_dir, name, "train"), test, inverse, embedding)
                scorers[name] = scorer
                metrics = scorer.score(parsed)
                table["rwjs"] = [float(task.ground_truth_score(t, p)) if p else 0.0
                                 for t, p in zip(test.targets, parsed, strict=True)]
                embedded, valid = scorer.embed_predictions(parsed)
                plots.embedding_png(scorer.real_test, embedded, tmp / f"embedding_{name}.png",
                                    title=f"{name}: generated vs real test cells (PCA of the embedding)")
            metrics.update(score_responses(task, test.prompts, outputs, knowledge.get(name), table))
            if reward_validity:
                reward = duality_reward({task.name: task}) if duality_reward else None
                metrics.update(_reward_validity(task, test, outputs, parsed, generate, table, seed, reward))
            results[name] = metrics
            _write_csv(table, tmp / f"predictions_{name}.csv")
        base = run_baselines(tasks_dir, tasks=list(results), seed=seed, max_examples=max_examples, split=split,
                             embedding=embedding, scorers=scorers) if baselines else {}
        (tmp / "metrics.json").write_text(json.dumps(_jsonable(results), indent=1))
        (tmp / "baselines.json").write_text(json.dumps(_jsonable(base), indent=1))
        (tmp / "run.json").write_text(json.dumps({"tasks_dir": str(tasks_dir), "seed": seed,
                                                  "max_examples": max_examples, **(run_info or {}),
                                                  "timing": timing}, indent=1))
        write_task_report(results, tmp, baselines=base)
    return results


def fast_label_fn(model_dir: str | Path, model: Any, tokenizer: Any,
                  tasks_dir: str | Path) -> Callable[[Any, TaskRows], list[str]]:
    """Classification answers by likelihood ranking (:mod:`cellduality.inference.fast`), as responses.

    The label comes without reasoning (``<think>  </think>``), so the faithfulness figures of such
    a run are empty; a model never taught the answer-only form is explained instead (one warning).
    """
    from rich.console import Console

    from cellduality.inference.fast import classify_fast
    from cellduality.inference.model import CellDualityModel
    from cellduality.tasks import load_tasks
    from cellduality.tasks.base import format_response

    mdl = CellDualityModel(path=Path(model_dir), model=model, tokenizer=tokenizer, info={}, tasks=load_tasks(tasks_dir))
    console = Console(stderr=True)

    def answer(task: Any, rows: TaskRows) -> list[str]:
        result = classify_fast(task, mdl, rows.prompts, list(zip(rows.known, rows.unknown, strict=True)),
                               warn=lambda line: console.print(f"[yellow]Warning:[/] {line}"))
        return [format_response(r, task.render_answer(label)) for r, label in zip(result.reasoning, result.labels,
                                                                                  strict=True)]

    return answer


def _generate_all(generate: GenerateFn, prompts: list[str], batch_size: int, label: str) -> list[str]:
    """Batched generation with a progress bar; one ``generate`` call per batch."""
    from rich.progress import Progress

    outputs: list[str] = []
    step = max(1, batch_size)
    with Progress(transient=True) as progress:
        bar = progress.add_task(label, total=len(prompts))
        for start in range(0, len(prompts), step):
            batch = prompts[start : start + step]
            answers = list(generate(batch))
            if len(answers) != len(batch):
                raise RuntimeError(f"generate returned {len(answers)} texts for {len(batch)} prompts")
            outputs.extend(answers)
            progress.advance(bar, len(batch))
    return outputs


def _reward_validity(task: Any, rows: TaskRows, outputs: list[str], parsed: list[Any], generate: GenerateFn,
                     table: dict[str, list], seed: int, reward: Any = None) -> dict[str, float]:
    """How well the duality reward (``reward``; default: the paper's, through ``generate``) tracks
    correctness of the model's answers and separates the right answer from a wrong one."""
    from cellduality.evaluation.reward_diagnostics import right_vs_wrong
    from cellduality.rewards import DualityReward
    from cellduality.tasks.base import dumps

    reward = reward if reward is not None else DualityReward({task.name: task}, generate)
    columns = {"task": [task.name] * len(rows), "known": [dumps(k) for k in rows.known],
               "unknown": [dumps(u) for u in rows.unknown], "seed": rows.seeds}
    own = reward(rows.prompts, outputs, **columns)
    table["duality_reward"] = own
    out: dict[str, float] = {"duality_reward": float(np.mean(own))}
    if task.kind == "classification":
        out["reward_auc"] = M.reward_validity_auc(own, [c >= 1.0 for c in table["correct"]])
    else:
        out["reward_spearman"] = _spearman(own, table["rwjs"])
    # right vs wrong, paired per example: the one definition of `cellduality diagnose` (what GRPO sees)
    paired = right_vs_wrong(task, [{**{k: v[i] for k, v in columns.items()}, "target": dumps(rows.targets[i])}
                                   for i in range(len(rows))], reward, seed)
    if paired["n"]:
        out["reward_auc_contrast"] = paired["right_vs_wrong_auc"]
    return out


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return M.NAN
    return float(spearmanr(a, b).statistic)


def _text(task: Any, answer: Any) -> str:
    return "" if answer is None else task.render_answer(answer)


def _write_csv(table: dict[str, list], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(table).to_csv(path, index=False)


def _jsonable(value: Any) -> Any:
    """NaN -> null so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
