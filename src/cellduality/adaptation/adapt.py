"""``adapt``: a trained model gets better on a user's own, unlabelled cells (duality GRPO).

The paper's largest gains are out of distribution (Table 2): the duality reward needs no label,
so a model trained on a labelled reference can keep training on *another* lab's, condition's or
species' cells. This module is that step as one call:

1. rank the user's cells within the model's gene panel, as inference does, and pose the model's
   own tasks on them (:mod:`cellduality.adaptation.rows`; labels in the file are never read);
2. print the label-free diagnostics of the duality reward on these cells and say plainly when
   it cannot help (:mod:`cellduality.adaptation.diagnostics`);
3. run Stage 2 (:func:`cellduality.training.grpo.run_grpo`) with the duality reward and the
   default recipe, for a budget of steps and/or wall time;
4. record the adaptation data and budget in the adapted model's ``cellduality.json`` and card,
   and optionally annotate a copy of the cells with the adapted model.

Layout of ``OUT``: ``tasks/`` (the adaptation tasks folder), ``diagnostics.json``, ``model/``
(the adapted model, a regular ``grpo`` output: use it with ``cellduality annotate --model
OUT/model``), ``annotated.h5ad`` (``annotate=True``) and ``adapt.json`` (written last: a
finished adaptation). ``resume=True`` continues an interrupted run with the same inputs only.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellduality.errors import CellDualityError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from cellduality.training.grpo import GRPOSettings

SUMMARY_FILE = "adapt.json"
DIAGNOSTICS_FILE = "diagnostics.json"
ANNOTATED_FILE = "annotated.h5ad"
CARD_START = "<!-- cellduality:adaptation -->"
CARD_END = "<!-- /cellduality:adaptation -->"
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds from ``90``, ``90s``, ``30m``, ``1.5h`` or ``1d`` (``None`` stays ``None``)."""
    if text is None or isinstance(text, (int, float)):
        seconds = None if text is None else float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise CellDualityError(f"--wall-time '{text}' is not a duration; write e.g. 90s, 30m or 2h.")
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]
    if seconds is not None and seconds <= 0:
        raise CellDualityError(f"--wall-time must be positive, got {text}.")
    return seconds


def wall_time_callback(seconds: float) -> Any:
    """A ``TrainerCallback`` that ends training after the first step finishing past ``seconds``.

    Training ends the normal way (the trainer saves the model and metrics), so a run cut by its
    wall-time budget is a finished adaptation, not an interrupted one.
    """
    from transformers import TrainerCallback

    class WallTime(TrainerCallback):
        def __init__(self) -> None:
            self.started: float | None = None
            self.stopped = False

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            if self.started is not None and time.monotonic() - self.started >= seconds:
                control.should_training_stop = True
                self.stopped = True
            return control

    return WallTime()


def _settings(settings: GRPOSettings | None, steps: int | None, seed: int) -> GRPOSettings:
    """The default recipe (or ``settings``), with the duality reward, the seed and the step budget."""
    from cellduality.training.grpo import GRPOSettings

    if steps is not None and steps < 1:
        raise CellDualityError(f"--steps must be at least 1, got {steps}.")
    base = settings if settings is not None else GRPOSettings()
    update: dict[str, Any] = {"reward": "duality", "seed": seed}
    if steps is not None:
        update["max_steps"] = steps
    return GRPOSettings.model_validate({**base.model_dump(), **update})


def _read_cells(adata: AnnData | str | os.PathLike[str]) -> tuple[AnnData, Path | None]:
    if isinstance(adata, (str, os.PathLike)):
        from cellduality.sentences import read_h5ad

        path = Path(adata)
        if not path.is_file():
            raise CellDualityError(f"{path} does not exist; pass your cells as an .h5ad file.")
        return read_h5ad(path), path
    return adata, None


def _model_dir(model: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    from cellduality.models.loading import read_model_info
    from cellduality.tasks import load_tasks

    path = Path(model)
    info = read_model_info(path)  # one-line ModelError when it is not a CellDuality model folder
    if not load_tasks(path / "cellduality.json"):
        raise ModelError(f"{path} records no tasks in cellduality.json; adapt needs a model from `cellduality sft`.")
    return path, info


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _record_in_model(model_out: Path, adaptation: Mapping[str, Any]) -> None:
    """Name the adaptation data and budget in the adapted model's ``cellduality.json`` and card (README.md)."""
    info_path = model_out / "cellduality.json"
    info = json.loads(info_path.read_text())
    info["adaptation"] = dict(adaptation)
    _write_json(info_path, info)
    budget = adaptation["budget"]
    section = "\n".join([
        CARD_START, "## Adaptation (label-free)", "",
        f"Adapted with `cellduality adapt` from `{adaptation['source_model']}` on the unlabelled cells "
        f"`{adaptation['data']}` ({adaptation['n_cells']} cells; prompts per task: "
        f"{', '.join(f'{k} {v}' for k, v in adaptation['prompts'].items())}), with the duality reward "
        f"(`{adaptation['dual_reward']}`) and the default GRPO recipe.", "",
        f"- **Budget:** {budget['max_steps']} steps"
        + (f" or {budget['wall_time_s']:.0f} s of wall time" if budget.get("wall_time_s") else "")
        + f"; ran {budget['steps_run']} steps in {budget['seconds']:.0f} s"
        + (" (stopped by the wall-time budget)" if budget.get("stopped_by_wall_time") else ""),
        f"- **Seed:** {adaptation['seed']}",
        "- **Labels:** none were read (the duality reward needs none).", CARD_END, ""])
    card = model_out / "README.md"
    text = card.read_text() if card.is_file() else ""
    if CARD_START in text and CARD_END in text:
        text = text[:text.index(CARD_START)] + section + text[text.index(CARD_END) + len(CARD_END):].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(card)


def _diagnose(model_dir: Path, tasks: Any, rows: Any, settings: GRPOSettings, cells: int, seed: int,
              echo: Callable[[str], None]) -> dict[str, Any]:
    import gc

    from cellduality.adaptation.diagnostics import label_free_diagnostics
    from cellduality.inference.model import CellDualityModel

    mdl = CellDualityModel.load(model_dir)
    try:
        report = label_free_diagnostics(mdl, {**tasks, **rows.tasks}, {n: rows.examples[n] for n in rows.counts},
                                        settings=settings,
                                        max_examples=cells, seed=seed)
    finally:
        del mdl
        gc.collect()
    for result in report["tasks"].values():
        echo(result["verdict"])
    return report


def adapt(
    adata: AnnData | str | os.PathLike[str],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    steps: int | None = None,
    wall_time: str | float | None = None,
    seed: int = 0,
    settings: GRPOSettings | None = None,
    drug_key: str | None = None,
    drug: str | None = None,
    control_key: str | None = None,
    control_value: str = "control",
    max_cells: int | None = None,
    min_overlap: float = 0.5,
    diagnose_cells: int = 64,
    annotate: bool = False,
    resume: bool = False,
    echo: Callable[[str], None] | None = print,
    **sentence_options: Any,
) -> dict[str, Any]:
    """Adapt ``model`` to the unlabelled cells ``adata`` with duality GRPO; return the summary (``adapt.json``).

    ``steps`` caps optimiser steps (default: the recipe's ``max_steps``), ``wall_time`` the
    training time (``"30m"``, seconds as a number); training stops at whichever comes first.
    ``settings`` replaces the default recipe (the reward is always duality). ``drug_key``/``drug``
    add the sensitivity task, ``control_key``/``control_value`` the perturbation task (control
    cells posed with the model's perturbations). ``max_cells`` caps the cells used (seeded),
    ``diagnose_cells`` the cells of the diagnostics (0: skip them). ``sentence_options`` are the
    gene-id options of ``cellduality sentences`` (``gene_map``, ``orthologs``, ``layer``, ...).
    ``annotate`` writes ``OUT/annotated.h5ad`` with the adapted model's annotations.
    """
    from cellduality.adaptation.rows import build_rows, write_tasks_folder
    from cellduality.outputs import check_fingerprint, check_output_dir, folder_digest, record_fingerprint
    from cellduality.tasks import load_tasks
    from cellduality.training.grpo import run_grpo

    say = echo or (lambda _line: None)
    model_dir, _ = _model_dir(model)
    cells_path = Path(adata) if isinstance(adata, (str, os.PathLike)) else None
    out = check_output_dir(out_dir, "adapt", inputs=[cells_path, model_dir], resume=resume)
    seconds = parse_duration(wall_time)
    recipe = _settings(settings, steps, seed)
    if diagnose_cells < 0:
        raise CellDualityError(f"diagnose_cells must be >= 0, got {diagnose_cells}.")
    cells, _ = _read_cells(adata)
    tasks = load_tasks(model_dir / "cellduality.json")
    rows = build_rows(cells, tasks, seed=seed, drug_key=drug_key, drug=drug, control_key=control_key,
                      control_value=control_value, max_cells=max_cells, min_overlap=min_overlap,
                      sentence_options=sentence_options)
    data_name = str(cells_path) if cells_path else f"an in-memory AnnData of {cells.n_obs} cells"
    options = {"drug_key": drug_key, "drug": drug, "control_key": control_key, "control_value": control_value,
               "max_cells": max_cells, "sentence_options": dict(sentence_options)}
    fingerprint = {"model": {"path": str(model_dir.resolve()), "digest": folder_digest(model_dir)},
                   "cells": rows.digest(), "settings": recipe.model_dump(mode="json"), "options": options}
    check_fingerprint(out, fingerprint, resume)
    if (out / SUMMARY_FILE).is_file() and not annotate:
        say(f"{out} holds a finished adaptation; nothing to do.")
        return json.loads((out / SUMMARY_FILE).read_text())
    record_fingerprint(out, fingerprint, "adapt")
    say(f"Adapting {model_dir} to {data_name}: {rows.n_cells} cells, "
        f"{rows.overlap['model_genes_in_data']}/{rows.overlap['model_genes']} model genes expressed; "
        f"prompts: {', '.join(f'{k} {v}' for k, v in rows.counts.items())}.")
    adaptation = {"data": data_name, "n_cells": rows.n_cells, "prompts": rows.counts, "overlap": rows.overlap,
                  "source_model": str(model_dir), "seed": seed, "dual_reward": recipe.dual_reward,
                  "options": options, "labels_read": False}
    tasks_dir = out / "tasks"
    if not (tasks_dir / "tasks.json").is_file():
        write_tasks_folder(rows, model_dir, tasks_dir, adaptation)

    diagnostics_path = out / DIAGNOSTICS_FILE
    if diagnostics_path.is_file():
        diagnostics = json.loads(diagnostics_path.read_text())
    elif diagnose_cells:
        say(f"Label-free diagnostics of the duality reward on {min(diagnose_cells, rows.n_cells)} cells "
            f"(G={recipe.num_generations}, T={recipe.temperature}):")
        diagnostics = _diagnose(model_dir, tasks, rows, recipe, diagnose_cells, seed, say)
        _write_json(diagnostics_path, diagnostics)
    else:
        diagnostics = {"skipped": True}

    model_out = out / "model"
    callback = wall_time_callback(seconds) if seconds else None
    say(f"GRPO (duality reward '{recipe.dual_reward}'): up to {recipe.max_steps} steps"
        + (f" or {seconds:.0f} s" if seconds else "") + f" -> {model_out}")
    started = time.monotonic()
    metrics = run_grpo(tasks_dir, model_out, model_dir, recipe, resume=resume,
                       callbacks=[callback] if callback else None)
    info = json.loads((model_out / "cellduality.json").read_text())
    if "adaptation" not in info:
        adaptation["budget"] = {"max_steps": recipe.max_steps, "wall_time_s": seconds,
                                "steps_run": metrics["global_step"], "seconds": time.monotonic() - started,
                                "stopped_by_wall_time": bool(callback and callback.stopped)}
        adaptation["diagnostics"] = {n: {k: r.get(k) for k in ("self_consistency_auc", "zero_spread_share")}
                                     for n, r in diagnostics.get("tasks", {}).items()}
        _record_in_model(model_out, adaptation)
    else:
        adaptation = info["adaptation"]
    summary = {**adaptation, "model": str(model_out), "tasks_dir": str(tasks_dir),
               "diagnostics_file": str(diagnostics_path) if diagnostics_path.is_file() else None,
               "annotated": None}
    if annotate:
        summary["annotated"] = str(_annotate(cells, model_out, out / ANNOTATED_FILE, seed, sentence_options))
        say(f"Wrote the adapted model's annotations to {summary['annotated']}.")
    _write_json(out / SUMMARY_FILE, summary)
    say(f"Adapted model: {model_out} ({adaptation['budget']['steps_run']} steps).")
    return summary


def _annotate(cells: AnnData, model_out: Path, path: Path, seed: int, sentence_options: Mapping[str, Any]) -> Path:
    """The adapted model's annotations in a copy of the cells (the caller's object is never changed)."""
    from cellduality.inference import annotate

    annotated = annotate(cells, str(model_out), seed=seed, **dict(sentence_options))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        annotated.write_h5ad(tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CellDualityError(f"Cannot write {path}: {exc.strerror or exc}; check free disk space.") from None
    return path
