"""``TASKS_DIR`` -> chain-of-thought SFT folder: teacher, filtering, dual rows, report (paper §3.3.1).

Resumable by construction. Work happens in ``.<OUT>.teach-partial`` beside the output: every
finished batch of prompts is appended to ``progress.jsonl`` (flushed and fsynced), keyed by
``split/direction/id``, so a re-run after ``kill -9`` skips what is done and re-does only the
batch in flight -- whose API responses the teacher's cache already holds. The last, possibly torn,
line is dropped on resume. The SFT ``DatasetDict`` is written to a temporary folder and renamed
into place, then the work folder is removed: ``OUT_DIR`` is either absent or complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.outputs import describe_differences, has_content, replace_dir
from cellduality.redaction import redact
from cellduality.tasks.base import Task, loads
from cellduality.tasks.text import stable_seed
from cellduality.teacher.base import Teacher, TeacherRequest
from cellduality.teacher.config import ANSWER_ONLY_FORM, PRIMAL_DIRECT_FORM, TeachConfig
from cellduality.teacher.filtering import Verdict, judge_dual, judge_primal, select

COPIED_FILES = ("tasks.json", "inverse.json", "vocabulary.json")
SFT_COLUMNS = ("prompt", "completion", "task", "direction", "id")
REPORT_FILE = "teach_report.json"


# --------------------------------------------------------------------------------------------
# Progress log
# --------------------------------------------------------------------------------------------


class ProgressLog:
    """Append-only JSONL of finished prompts; the last record of a key wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # torn last line from a kill: drop it
                data = data[: data.rfind(b"\n") + 1]
                with open(path, "r+b") as fh:
                    fh.truncate(len(data))
            for line in data.decode("utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                self.records[record["key"]] = record

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        for line in lines:
            record = json.loads(line)
            self.records[record["key"]] = record


# --------------------------------------------------------------------------------------------
# Teacher factory
# --------------------------------------------------------------------------------------------


def make_teacher(config: TeachConfig, tasks: Mapping[str, Task], train_rows: Iterable[Mapping[str, Any]]) -> Teacher:
    """The configured teacher; the offline one is fitted on the primal *training* rows."""
    if config.teacher == "offline":
        from cellduality.teacher.offline import OfflineTeacher

        return OfflineTeacher(tasks, temperature=config.effective_temperature, seed=config.seed,
                              noise=config.noise).fit(train_rows)
    from cellduality.paths import cache_dir
    from cellduality.teacher.openai_teacher import OpenAITeacher

    return OpenAITeacher(
        config.model,
        config.base_url,
        temperature=config.effective_temperature,
        max_tokens=config.max_tokens,
        concurrency=config.concurrency,
        timeout=config.timeout,
        max_retries=config.max_retries,
        backoff=config.backoff,
        api_key_env=config.api_key_env,
        cache_path=config.cache_path or cache_dir() / "teacher" / "responses.sqlite",
        price_prompt_per_million=config.price_prompt_per_million,
        price_completion_per_million=config.price_completion_per_million,
    )


# --------------------------------------------------------------------------------------------
# Rows -> requests -> records
# --------------------------------------------------------------------------------------------


def choose_rows(rows: Sequence[Mapping[str, Any]], limit: int | None, seed: int, split: str) -> list[Mapping[str, Any]]:
    """Unique ids (a weighted mixture may repeat rows), at most ``limit`` per task (seeded sample)."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[str] = set()
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            by_task.setdefault(row["task"], []).append(row)
    chosen: list[Mapping[str, Any]] = []
    for task, task_rows in by_task.items():
        if limit is not None and len(task_rows) > limit:
            picked = set(random.Random(stable_seed(seed, split, task)).sample(range(len(task_rows)), limit))
            task_rows = [r for i, r in enumerate(task_rows) if i in picked]
        chosen.extend(task_rows)
    return chosen


def request_for_row(split: str, direction: str, row: Mapping[str, Any]) -> TeacherRequest:
    dual = direction == "dual"
    return TeacherRequest(
        key=f"{split}/{direction}/{row['id']}",
        task=row["task"],
        direction=direction,  # type: ignore[arg-type]
        prompt=row["prompt"],
        known=loads(row["known"]),
        unknown=loads(row["unknown"]),
        reference=row["answer"] if dual else None,  # primal answers are never shown to the teacher
        target=loads(row["target"]) if dual else None,
        seed=int(row["seed"]),
    )


def _record(request: TeacherRequest, row: Mapping[str, Any], texts: list[str], error: str | None,
            verdicts: list[Verdict], kept: list[Verdict], split: str) -> dict[str, Any]:
    return {
        "key": request.key,
        "split": split,
        "direction": request.direction,
        "task": request.task,
        "id": row["id"],
        "prompt": row["prompt"],
        "candidates": len(texts),
        "accepted": sum(v.accepted for v in verdicts),
        "scores": [round(v.score, 4) for v in verdicts],
        "reasons": dict(Counter(v.reason for v in verdicts)),
        "completions": [v.completion for v in kept],
        "error": error,
    }


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def build_sft(
    tasks_dir: str | Path,
    out_dir: str | Path,
    config: TeachConfig | None = None,
    *,
    teacher: Teacher | None = None,
    overwrite: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run teacher + filtering over ``TASKS_DIR`` and write the SFT folder ``OUT_DIR``; return the report.

    ``on_progress(stage, done, total)`` is called after every batch (the CLI draws a bar with it).
    """
    from cellduality.tasks.builders import load_task_datasets, load_tasks

    config = config or TeachConfig()
    tasks_dir, out = Path(tasks_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CellDualityError(f"{out} already exists and is not empty; choose a new folder or pass --overwrite.")
    tasks = load_tasks(tasks_dir)
    primal = load_task_datasets(tasks_dir, "primal")
    dual = load_task_datasets(tasks_dir, "dual") if config.include_dual else None
    splits = [s for s in ("train", "test") if s in primal and len(primal[s]) > 0]
    if "train" not in splits:
        raise CellDualityError(f"{tasks_dir}/primal has no training rows; rebuild it with `cellduality tasks build`.")

    work = out.parent / f".{out.name}.teach-partial"
    work.mkdir(parents=True, exist_ok=True)
    teacher = teacher or make_teacher(config, tasks, primal["train"])
    identity = {"tasks_dir": str(tasks_dir.resolve()), "teacher": teacher.describe(),
                "config": {k: redact(v) for k, v in config.model_dump(exclude=_NOT_IDENTITY).items()}}
    _check_identity(work / "run.json", identity)
    progress = ProgressLog(work / "progress.jsonl")

    limits = {"train": config.max_examples,
              "test": config.max_test_examples if config.max_test_examples is not None else config.max_examples}
    primal_rows = {s: choose_rows(primal[s], limits[s], config.seed, s) for s in splits}
    for split in splits:
        _run_stage(teacher, tasks, config, progress, split, "primal", primal_rows[split], on_progress)
    if dual is not None:
        for split in splits:
            keep_ids = {r["id"] for r in progress.records.values()
                        if r["split"] == split and r["direction"] == "primal" and r["completions"]}
            rows = [r for r in choose_rows(dual[split], None, config.seed, split) if r["id"] in keep_ids] \
                if split in dual else []
            _run_stage(teacher, tasks, config, progress, split, "dual", rows, on_progress)

    report = _report(progress, splits, teacher, config)
    _write_output(tasks_dir, out, work, progress, splits, primal_rows, report, overwrite,
                  direct_dual=config.direct_dual,
                  direct_primal={n: t for n, t in tasks.items() if t.kind == "classification"}
                  if config.direct_primal else {}, direct_primal_forms=config.direct_primal_forms)
    return report


_NOT_IDENTITY = {"concurrency", "batch_size", "timeout", "max_retries", "backoff", "cache_path",
                 "price_prompt_per_million", "price_completion_per_million"}
"""Settings that may change between an interrupted run and its resumption."""


def _check_identity(path: Path, identity: dict[str, Any]) -> None:
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(identity)):
            raise CellDualityError(
                f"An interrupted run with different settings ({describe_differences(previous, identity)}) is in "
                f"{path.parent}; re-run it with the same options to resume, "
                "or delete that folder to start over."
            )
    else:
        path.write_text(json.dumps(identity, indent=1))


def _run_stage(teacher: Teacher, tasks: Mapping[str, Task], config: TeachConfig, progress: ProgressLog, split: str,
               direction: str, rows: Sequence[Mapping[str, Any]],
               on_progress: Callable[[str, int, int], None] | None) -> None:
    stage = f"{split} {direction}"
    pending = [r for r in rows if f"{split}/{direction}/{r['id']}" not in progress.records]
    done, total = len(rows) - len(pending), len(rows)
    if on_progress:
        on_progress(stage, done, total)
    for start in range(0, len(pending), config.batch_size):
        batch = pending[start : start + config.batch_size]
        requests = [request_for_row(split, direction, row) for row in batch]
        generations = teacher.generate(requests, config.n)
        records = []
        for request, row, gen in zip(requests, batch, generations, strict=True):
            task = tasks[request.task]
            if direction == "primal":
                target = loads(row["target"])
                verdicts = [judge_primal(task, target, t, config.threshold_for(task.name)) for t in gen.texts]
            else:
                verdicts = [judge_dual(task, request.unknown, row["answer"], t, config.dual_threshold)
                            for t in gen.texts]
            kept = select(verdicts, config.keep_per_prompt)
            records.append(_record(request, row, gen.texts, gen.error, verdicts, kept, split))
        progress.append(records)
        done += len(batch)
        if on_progress:
            on_progress(stage, done, total)


def _report(progress: ProgressLog, splits: Sequence[str], teacher: Teacher, config: TeachConfig) -> dict[str, Any]:
    """Acceptance per split, task and direction: candidates, accepted, prompts kept, failures."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in progress.records.values():
        g = groups.setdefault((rec["split"], rec["task"], rec["direction"]), {
            "prompts": 0, "candidates": 0, "accepted": 0, "prompts_kept": 0, "rows": 0, "failures": 0,
            "score_sum": 0.0, "reasons": Counter()})
        g["prompts"] += 1
        g["candidates"] += rec["candidates"]
        g["accepted"] += rec["accepted"]
        g["prompts_kept"] += bool(rec["completions"])
        g["rows"] += len(rec["completions"])
        g["failures"] += rec["error"] is not None and rec["candidates"] == 0
        g["score_sum"] += sum(rec["scores"])
        g["reasons"].update(rec["reasons"])
    table = []
    for (split, task, direction), g in sorted(groups.items(), key=lambda kv: (splits.index(kv[0][0]), kv[0][1], kv[0][2] != "primal")):
        table.append({
            "split": split, "task": task, "direction": direction,
            "prompts": g["prompts"], "candidates": g["candidates"], "accepted": g["accepted"],
            "acceptance_rate": round(g["accepted"] / g["candidates"], 4) if g["candidates"] else 0.0,
            "prompts_kept": g["prompts_kept"],
            "prompt_yield": round(g["prompts_kept"] / g["prompts"], 4) if g["prompts"] else 0.0,
            "mean_score": round(g["score_sum"] / g["candidates"], 4) if g["candidates"] else 0.0,
            "sft_rows": g["rows"], "failures": g["failures"], "reasons": dict(g["reasons"]),
        })
    failures = [rec["error"] for rec in progress.records.values() if rec["error"]]
    return {
        "teacher": teacher.describe(),
        "usage": teacher.usage.to_dict(),
        "n": config.n,
        "threshold": config.threshold,
        "task_thresholds": config.task_thresholds,
        "dual_threshold": config.dual_threshold,
        "acceptance": table,
        "failure_examples": failures[:20],
    }


def _why_nothing(report: dict[str, Any]) -> str:
    """The actual cause of an empty result: failing requests, unparseable answers or strict filtering."""
    rows = [r for r in report["acceptance"] if r["split"] == "train"]
    reasons: Counter = Counter()
    for r in rows:
        reasons.update(r["reasons"])
    if sum(r["candidates"] for r in rows) == 0:
        first = (report.get("failure_examples") or ["no answer"])[0]
        return f"every teacher request failed ({str(first)[:120]}); check the server URL, model name and key."
    top, _ = reasons.most_common(1)[0] if reasons else ("below threshold", 0)
    if top in ("malformed", "no reasoning"):
        return (f"most answers were {top} (no <think>/<answer> blocks the task can read); the server or model "
                "does not follow the answer format -- check --model and --base-url.")
    return "answers were wrong or scored below the threshold; lower --threshold, raise --n or use a stronger teacher."


def _write_output(tasks_dir: Path, out: Path, work: Path, progress: ProgressLog, splits: Sequence[str],
                  primal_rows: Mapping[str, Sequence[Mapping[str, Any]]], report: dict[str, Any],
                  overwrite: bool, *, direct_dual: bool = False,
                  direct_primal: Mapping[str, Task] | None = None,
                  direct_primal_forms: Sequence[str] = (PRIMAL_DIRECT_FORM,)) -> None:
    """Save the accepted rows; with ``direct_dual`` each kept dual prompt also gets a direct answer.

    The direct row (the prompt + :data:`~cellduality.tasks.base.DIRECT_INSTRUCTION`, no
    reasoning block, the reference ``x_u``) teaches the form the
    likelihood duality reward scores teacher-forced (:class:`cellduality.rewards.DualLikelihoodReward`),
    so that reward reads the dual's belief about ``x_u`` without generating a reasoning first.
    Likewise each kept primal row of a task in ``direct_primal`` (classification tasks) gets a
    :data:`~cellduality.tasks.base.PRIMAL_DIRECT` row (the primal prompt + the instruction) and/or,
    as ``direct_primal_forms`` says, an :data:`~cellduality.tasks.base.ANSWER_PROMPT` row, the same
    cell under the task's answer-only prompt
    (:meth:`~cellduality.tasks.base.Task.answer_only_prompt`; a task without one gets the
    ``primal_direct`` row instead, once): fast annotation ranks the candidate labels by the
    likelihood of the answer-only form (:func:`cellduality.inference.fast.taught_form`).
    """
    from datasets import Dataset, DatasetDict, Features, Value

    from cellduality.tasks.base import (
        ANSWER_PROMPT,
        PRIMAL_DIRECT,
        direct_prompt,
        direct_response,
        extract_answer,
    )

    features = Features({c: Value("string") for c in SFT_COLUMNS})
    data = {}
    for split in splits:
        rows = []
        for direction in ("primal", "dual"):
            for primal_row in primal_rows[split]:
                row_id = primal_row["id"]
                rec = progress.records.get(f"{split}/{direction}/{row_id}")
                completions = (rec or {}).get("completions") or []
                for completion in completions:
                    rows.append({"prompt": rec["prompt"], "completion": completion, "task": rec["task"],
                                 "direction": direction, "id": row_id})
                if not completions:
                    continue
                answer = direct_response(extract_answer(completions[0]) or "")
                if direction == "primal" and rec["task"] in (direct_primal or {}):
                    own = direct_primal[rec["task"]].answer_only_prompt(
                        loads(primal_row["known"]), loads(primal_row["unknown"])) \
                        if ANSWER_ONLY_FORM in direct_primal_forms else None
                    # a task without its own answer-only wording: the primal prompt + the instruction
                    forms = {ANSWER_PROMPT: own} if own is not None else {}
                    if PRIMAL_DIRECT_FORM in direct_primal_forms or own is None:
                        forms = {PRIMAL_DIRECT: direct_prompt(rec["prompt"]), **forms}
                    rows.extend({"prompt": prompt, "direction": form, "task": rec["task"], "completion": answer,
                                 "id": row_id} for form, prompt in forms.items())
                elif direction == "dual" and direct_dual:  # the same prompt's answer alone, asked for by its own prompt
                    rows.append({"prompt": direct_prompt(rec["prompt"]), "task": rec["task"],
                                 "direction": "dual_direct", "completion": answer, "id": row_id})
        if split == "train" and not rows:
            raise CellDualityError(f"The teacher produced no accepted training rows: {_why_nothing(report)}")
        data[split] = Dataset.from_list(rows, features=features) if rows else Dataset.from_dict(
            {c: [] for c in SFT_COLUMNS}, features=features)
    tmp = work / "output.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    import datasets

    from cellduality.tasks.builders import one_shard_if_empty

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar per shard is noise next to ours
    try:
        DatasetDict(data).save_to_disk(str(tmp), num_shards=one_shard_if_empty(data))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    for name in COPIED_FILES:
        if (tasks_dir / name).is_file():
            shutil.copy2(tasks_dir / name, tmp / name)
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1))
    if out.exists() and not overwrite and has_content(out):
        raise CellDualityError(f"{out} appeared while teaching; choose a new folder or pass --overwrite.")
    replace_dir(tmp, out, "teach")  # never replaces a folder `teach` did not write
    shutil.rmtree(work, ignore_errors=True)
