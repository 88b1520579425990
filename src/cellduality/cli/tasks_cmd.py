"""``cellduality tasks``: build primal / dual / RL datasets from cell sentences, list the tasks."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import typer

from cellduality.errors import CellDualityError

tasks_app = typer.Typer(help="The four reasoning tasks as primal/dual pairs: build their datasets.",
                        no_args_is_help=True)


def _parse_pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise CellDualityError(f"{what} '{value}' is not of the form name=value.")
        pairs[key.strip()] = val.strip()
    return pairs


def _parse_weights(values: list[str]) -> dict[str, float]:
    weights = {}
    for name, value in _parse_pairs(values, "--weight").items():
        try:
            weights[name] = float(value)
        except ValueError:
            raise CellDualityError(f"--weight {name}={value}: the weight must be a number.") from None
        if weights[name] < 0:
            raise CellDualityError(f"--weight {name}={value}: the weight must not be negative.")
    return weights


def parse_task_options(values: list[str], tasks: list[str]) -> dict[str, dict[str, object]]:
    """``task.key=value`` pairs -> typed per-task options; unknown tasks or keys are errors with a suggestion.

    Names, types and bounds come from each task's ``options_model`` (:mod:`cellduality.tasks.options`),
    the same declaration the task validates itself with: command-line text is converted there
    (``include_control=false`` is ``False``, not a truthy string). Only the options given are returned.
    """
    import difflib

    from cellduality.tasks.base import TASKS, get_task
    from cellduality.tasks.options import validate_options

    given: dict[str, dict[str, str]] = {}
    for dotted, value in _parse_pairs(values, "--option").items():
        name, sep, key = dotted.partition(".")
        if not sep:
            raise CellDualityError(f"--option {dotted}={value}: write it as task.key=value.")
        if name not in tasks:
            close = difflib.get_close_matches(name, [*tasks, *TASKS], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise CellDualityError(f"--option {dotted}: '{name}' is not a task being built ({', '.join(tasks)}){hint}.")
        given.setdefault(name, {})[key] = value
    options: dict[str, dict[str, object]] = {}
    for name, raw in given.items():
        model = type(get_task(name)).options_model if name not in TASKS else TASKS[name].options_model
        options[name] = validate_options(name, model, raw, where="--option ").model_dump(include=set(raw))
    return options


@tasks_app.command("build")
def build(
    sentences_dir: Path = typer.Argument(..., help="Folder written by `cellduality sentences`."),
    out_dir: Path = typer.Argument(..., help="Where to write primal/, dual/, rl/, rl_oracle/ and tasks.json."),
    task: list[str] = typer.Option(..., "--task", "-t", help="annotation, generation, sensitivity, perturbation."),
    label_key: str | None = typer.Option(None, help="Label column (default: the one `cellduality sentences` recorded)."),
    weight: list[str] = typer.Option([], help="Mixture weight of a task in the train split, e.g. annotation=2."),
    seed: int = typer.Option(0, help="Seed for prompts, hidden genes, control pairing and mixing."),
    max_genes: int | None = typer.Option(None, min=2, help="Genes of a cell shown in prompts (default 32)."),
    max_examples: int | None = typer.Option(None, min=1, help="At most this many cells per task and split."),
    option: list[str] = typer.Option([], help="Task option task.key=value, e.g. perturbation.group_key=cell_type "
                                                    "(all of them: `cellduality tasks list --options`)."),
    overwrite: bool = typer.Option(False, help="Replace OUT_DIR if it holds an earlier `tasks build` output."),
    validation_fraction: float = typer.Option(0.0, min=0.0, max=0.95,
                                              help="Carve this share of the training cells into a validation split."),
) -> None:
    """Write the primal, dual, RL (no labels) and oracle-RL datasets for the chosen tasks."""
    from rich.console import Console
    from rich.table import Table

    from cellduality.outputs import check_output_dir
    from cellduality.tasks.builders import build_task_datasets

    if not sentences_dir.is_dir():
        raise CellDualityError(f"{sentences_dir} is not a folder; pass the output of `cellduality sentences`.")
    task_options = parse_task_options(option, list(dict.fromkeys(task)))
    weights = _parse_weights(weight)
    check_output_dir(out_dir, "tasks build", inputs=[sentences_dir], overwrite=overwrite)
    manifest = build_task_datasets(
        sentences_dir, task, out_dir, label_key=label_key, weights=weights, seed=seed,
        max_genes=max_genes, max_examples=max_examples, task_options=task_options, overwrite=overwrite,
        validation_fraction=validation_fraction,
    )
    table = Table(title=f"Task datasets in {out_dir}")
    table.add_column("task")
    for split in manifest["counts"]:
        table.add_column(split, justify="right")
    for name in manifest["tasks"]:
        table.add_row(name, *(str(manifest["counts"][s].get(name, 0)) for s in manifest["counts"]))
    console = Console()
    console.print(table)
    for split, by_task in manifest.get("unlabelled_cells", {}).items():
        for name, n in by_task.items():
            console.print(f"[yellow]{name}[/]: {n} {split} cells without a label were left out.", highlight=False)


@tasks_app.command("list")
def list_tasks(
    options: bool = typer.Option(False, "--options", help="Also list each task's options: type, default, meaning."),
) -> None:
    """List the registered tasks and what each one maps to what."""
    from cellduality.tasks.base import TASKS, get_task

    get_task("annotation")  # imports and registers the built-in tasks
    for name, cls in sorted(TASKS.items()):
        typer.echo(f"{name:14s} {cls.kind:15s} {cls.description}")
        if options:  # read from the task's options model: the one declaration `--option` is checked against
            for key, info in cls.options_model.model_fields.items():
                kind = str(info.annotation).replace("typing.", "")
                kind = "one of " + ", ".join(get_args(info.annotation)) if kind.startswith("Literal") else \
                    getattr(info.annotation, "__name__", kind)
                typer.echo(f"    {name}.{key}={info.default!r}  ({kind}) {info.description or ''}".rstrip())


def register(app: typer.Typer) -> None:
    """Add ``cellduality tasks ...`` to ``app``."""
    app.add_typer(tasks_app, name="tasks")
