"""``cellduality predict | annotate | sensitivity | generate | perturb``: a trained model on your own cells.

Each reads an ``.h5ad`` (never modified), writes results into a copy's ``.obs``/``.obsm``/``.uns``
and saves it to ``--out``; the Python API is :mod:`cellduality.inference` and ``cd.tl``.
``predict`` runs any task the model learned (a plug-in task included); ``annotate`` and
``sensitivity`` are ``predict`` with the task named, sharing its body and options.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from cellduality.cli.options import option, option_group
from cellduality.cli.sentences_cmd import with_gene_options
from cellduality.errors import CellDualityError

MODEL = typer.Option(..., "--model", help="A model folder written by `cellduality sft` or `cellduality grpo`.")
OUT = typer.Option(..., "--out", help="Where to write the result (.h5ad); never the input file.")
FALSE_CLAIMS = typer.Option("mark", "--false-claims", help="Reasoning claims that are false of the cell: 'mark' "
                            "wraps them as \\[unverified: … — why], 'drop' removes their sentence, 'keep' leaves them.")
TASKS = typer.Option(None, "--tasks", help="The tasks folder the model learned from, to also check its claims about "
                     "training frequencies (default: the one the model's files record, when it still exists).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace --out if that file already exists.")
METHOD = typer.Option("fast", "--method", help="'fast': labels ranked by likelihood in one forward pass per cell "
                      "(reasoning only with --explain); 'rerank': sampled reasoned answers reranked by the duality.")
EXPLAIN = typer.Option(False, "--explain", help="Fast method: also write reasoning for every cell (much slower).")
EXPLAIN_LEAST = typer.Option(0, "--explain-least-confident", min=0, metavar="N",
                             help="Fast method: write reasoning for the N least confident cells only.")
INPUT = typer.Argument(..., help="Your cells (.h5ad).")
DRUG = typer.Option(..., "--drug", help="Drug name, as the model was trained on it.")

# The options of every command that labels cells (predict, annotate, sensitivity): one declaration.
with_run_options = option_group([
    option("method", METHOD, str),
    option("explain", EXPLAIN, bool),
    option("explain_least_confident", EXPLAIN_LEAST, int),
    option("n_samples", typer.Option(4, min=1, help="Rerank method: answers sampled per cell for duality "
                                     "reranking (1 = greedy)."), int),
    option("batch_size", typer.Option(64, min=1, help="Cells per generation batch (reasoning)."), int),
    option("min_overlap", typer.Option(0.5, min=0.0, max=1.0, help="Stop if fewer of your genes are known to "
                                       "the model."), float),
    option("false_claims", FALSE_CLAIMS, str),
    option("copy_aware", typer.Option(True, "--copy-aware/--no-copy-aware", help="Copy the ranks the reasoning "
                                      "states from the input cell (and, for annotation, cite only its genes); "
                                      "--no-copy-aware shows the model's own text."), bool),
    option("tasks", TASKS, Optional[Path]),  # noqa: UP045
    option("seed", typer.Option(0), int),
    option("overwrite", OVERWRITE, bool),
], "run")


def _read(path: Path):
    from cellduality.sentences import read_h5ad

    return read_h5ad(path)


def _check_out(inp: Path | None, out: Path, model: Path, overwrite: bool) -> None:
    """Before any work: --out is a new (or, with --overwrite, replaceable) writable .h5ad, not an input."""
    from cellduality.models.loading import read_model_info
    from cellduality.outputs import check_output_file

    if inp is not None and out.resolve() == inp.resolve():
        raise CellDualityError(f"--out {out} is the input file; write to a new file (the input is never modified).")
    read_model_info(model)
    check_output_file(out, suffix=".h5ad", inputs=[inp, model], overwrite=overwrite)


def _write(adata, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(tmp)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CellDualityError(f"Cannot write {out}: {exc.strerror or exc}; check free disk space and permissions.") from None


def _summary(adata, column: str, key: str, console) -> None:
    from rich.table import Table

    counts = adata.obs[column].astype(str).value_counts()
    table = Table(title=f"{column} ({adata.n_obs} cells)")
    table.add_column("prediction")
    table.add_column("cells", justify="right")
    table.add_column("mean confidence", justify="right")
    conf = adata.obs.get(f"{key}_confidence")
    for label, n in counts.items():
        mean = "" if conf is None else f"{conf[adata.obs[column].astype(str) == label].mean():.2f}"
        table.add_row(str(label), str(n), mean)
    console.print(table)


def _check_method(method: str, explain: bool, least: int) -> None:
    """Before any work: a known method, and the explain options only where they apply."""
    from cellduality.inference.predict import METHODS

    if method not in METHODS:
        raise CellDualityError(f"--method {method}: choose one of {', '.join(METHODS)}.")
    if method != "fast" and (explain or least):
        raise CellDualityError("--explain and --explain-least-confident apply to --method fast; "
                               "--method rerank always writes reasoning.")


def _path(path: Path | None) -> str | None:
    return str(path) if path else None


def _faithfulness_line(adata, task: str, key: str, console) -> None:
    """One line on how true the written reasoning is (see docs/faithfulness.md)."""
    run = adata.uns.get(key, {}).get(task, {})
    if run.get("method") == "fast" and not run.get("explained"):
        console.print("Reasoning: not written (fast labels; pass --explain, or --explain-least-confident N).")
        return
    info = run.get("faithfulness", {})
    mean = info.get("mean_faithfulness")
    console.print(f"Reasoning: {'no checkable claim' if mean is None else f'{mean:.0%} of claims true'}; "
                  f"{info.get('cells_with_false_claims', 0)} cells with a false claim (--false-claims "
                  f"{info.get('false_claims')}); training-data claims {info.get('training_claims', 'unchecked')}.")
    if run.get("explained_written_differs") or run.get("explained_unparsed"):
        console.print(f"Of {run['explained']} explained cells, {run.get('explained_written_differs', 0)} wrote another "
                      f"answer than the label ranked after their reasoning and {run.get('explained_unparsed', 0)} "
                      "wrote no candidate (column cellduality_reasoning_answer).")


@dataclass(frozen=True)
class _Column:
    """``--input KEY=obs:COLUMN``: one value per cell, read from the input's ``.obs``."""

    name: str


def _parse_inputs(pairs: list[str]) -> dict[str, str | _Column]:
    """``--input KEY=VALUE`` (repeatable) as a mapping; ``VALUE`` ``obs:COLUMN`` names a per-cell column."""
    given: dict[str, str | _Column] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise CellDualityError(f"--input {pair!r}: write KEY=VALUE (e.g. drug=PLX4720), or KEY=obs:COLUMN "
                                   "for one value per cell.")
        if name in given:
            raise CellDualityError(f"--input {name} is given twice; give each input once.")
        column = value.removeprefix("obs:")
        given[name] = _Column(column.strip()) if column != value else value
    return given


def _task_inputs(task, given: dict[str, Any], adata, source: Path) -> dict[str, Any]:
    """The task's inputs from ``given`` (each one value, or an ``.obs`` column); every name and column checked."""
    declared = task.inference_inputs()
    takes = ", ".join(f"{name}=..." for name in declared) or "nothing besides the cells"
    for name in given:
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise CellDualityError(f"Task '{task.name}' has no input '{name}'; {hint}it takes {takes}.")
    missing = [name for name in declared if name not in given]
    if missing:
        raise CellDualityError(f"Task '{task.name}' needs --input {missing[0]}=VALUE (one value for every cell) or "
                               f"--input {missing[0]}=obs:COLUMN (each cell's own).")
    values: dict[str, Any] = {}
    for name, value in given.items():
        if isinstance(value, _Column):
            if value.name not in adata.obs.columns:
                columns = [str(c) for c in adata.obs.columns]
                close = difflib.get_close_matches(value.name, columns, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"its columns: {', '.join(columns) or 'none'}."
                raise CellDualityError(f"--input {name}=obs:{value.name}: {source} has no .obs column "
                                       f"'{value.name}'; {hint}")
            values[name] = adata.obs[value.name]
        else:
            values[name] = value
    return values


def _report(adata, task, key: str, out: Path, console) -> None:
    """What was written, in a few lines: the label counts and the reasoning's truth, or the read-back rate."""
    name = task.prediction_key or task.name
    if task.kind == "classification":
        _summary(adata, f"{key}_{name}", key, console)
        _faithfulness_line(adata, task.name, key, console)
        console.print(f"Wrote {out}: .obs['{key}_{name}', '{key}_reasoning', '{key}_confidence']")
        return
    consistent = float(adata.obs[f"{key}_consistent"].mean())
    console.print(f"Wrote {out}: .obs['{key}_{name}_sentence'], .obsm['{key}_{name}'] "
                  f"({consistent:.0%} read back as asked by the model's dual task).")


def _predict(input: Path, model: Path, out: Path, task: str, given: dict[str, Any], run: dict[str, Any],
             genes: dict[str, Any], key_added: str = "cellduality", **options: Any) -> None:
    """The body of ``predict``, ``annotate`` and ``sensitivity``: every cheap check first (the output
    file, the options, the model's task and its inputs, before any weight is loaded), then
    :func:`cellduality.tl.predict` on the cells and ``--out`` written."""
    from rich.console import Console

    from cellduality.cli.progress import stage_progress
    from cellduality.inference.generic import check_label_options, inputs_per_cell
    from cellduality.inference.model import find_task, model_tasks
    from cellduality.tl import predict

    run = dict(run)
    _check_out(input, out, model, run.pop("overwrite"))
    _check_method(run["method"], run["explain"], run["explain_least_confident"])
    found = find_task(model_tasks(model), task)
    check_label_options(found, run["method"], run["explain"], run["explain_least_confident"])
    adata = _read(input)
    inputs = _task_inputs(found, given, adata, input)
    inputs_per_cell(found, inputs, adata.n_obs)  # an unknown drug or cell type, before the model loads
    console = Console()
    with stage_progress() as progress:
        predict(adata, str(model), task, key_added=key_added, copy=False, tasks_dir=_path(run.pop("tasks")),
                progress=progress, warn=lambda line: console.print(f"[yellow]Warning:[/] {line}", highlight=False),
                **inputs, **run, **options, **genes)
    _write(adata, out)
    _report(adata, found, key_added, out, console)


def _task_command(app: typer.Typer, name: str, task: str, inputs: list, doc: str) -> None:
    """Register ``cellduality NAME``: ``predict --task TASK`` whose task inputs are the options ``inputs``."""

    @app.command(name, help=doc)
    @with_gene_options
    @with_run_options
    @option_group(inputs, "given")
    def command(
        input: Path = INPUT,
        model: Path = MODEL,
        out: Path = OUT,
        temperature: float = typer.Option(0.8, min=0.0, help="Rerank method: sampling temperature of the answers."),
        given: dict | None = None,
        run: dict | None = None,
        genes: dict | None = None,
    ) -> None:
        _predict(input, model, out, task, given, run, genes, temperature=temperature)


def register(app: typer.Typer) -> None:
    @app.command("predict")
    @with_gene_options
    @with_run_options
    def predict_cmd(
        input: Path = INPUT,
        model: Path = MODEL,
        task: str = typer.Option(..., "--task", help="A task the model learned (a plug-in task too: "
                                 "CELLDUALITY_TASKS=module); an unknown one lists the model's tasks."),
        out: Path = OUT,
        inputs: list[str] = typer.Option(None, "--input", metavar="KEY=VALUE", help="What the task needs besides "
                                         "the cells, repeatable: one value for every cell (drug=PLX4720) or "
                                         "obs:COLUMN for each cell's own (cell_type=obs:bulk_labels)."),
        temperature: float | None = typer.Option(None, min=0.0, help="Sampling temperature (rerank method: default "
                                                 "0.8; generated cells: greedy when unset)."),
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Longest answer in tokens "
                                                  "(default 160 for labels, 256 for generated cells)."),
        key_added: str = typer.Option("cellduality", "--key-added", help="Results go to .obs['KEY_...'] and "
                                      ".uns['KEY']."),
        run: dict | None = None,
        genes: dict | None = None,
    ) -> None:
        """Any task the model learned, a plug-in task included: a label per cell, or a generated cell read back by the dual."""
        _predict(input, model, out, task, _parse_inputs(inputs or []), run, genes, key_added=key_added,
                 temperature=temperature, max_new_tokens=max_new_tokens)

    _task_command(app, "annotate", "annotation", [], "Annotate cell types: labels and confidence, reasoning when "
                  "asked (--explain, --method rerank).")
    _task_command(app, "sensitivity", "sensitivity", [option("drug", DRUG, str)], "Predict sensitive/resistant to "
                  "a drug: labels and confidence, reasoning when asked.")

    @app.command("generate")
    def generate_cmd(
        model: Path = MODEL,
        cell_type: str = typer.Option(..., "--cell-type", help="A cell type the model knows."),
        n: int = typer.Option(10, "-n", min=1, help="Number of cells to generate."),
        out: Path = OUT,
        temperature: float = typer.Option(0.8, min=0.0),
        batch_size: int = typer.Option(32, min=1),
        false_claims: str = FALSE_CLAIMS,
        tasks: Path | None = TASKS,
        seed: int = typer.Option(0),
        overwrite: bool = OVERWRITE,
    ) -> None:
        """Generate cells of a type: cell sentences plus reconstructed expression (.X)."""
        from rich.console import Console

        from cellduality.inference import generate_cells

        _check_out(None, out, model, overwrite)
        result = generate_cells(str(model), cell_type, n, false_claims=false_claims, tasks_dir=_path(tasks), temperature=temperature, batch_size=batch_size, seed=seed)
        _write(result, out)
        consistent = float(result.obs["cellduality_consistent"].mean())
        Console().print(f"Wrote {n} generated {cell_type} cells to {out} "
                        f"({consistent:.0%} read back as {cell_type} by the model's dual task).")

    @app.command("perturb")
    @with_gene_options
    def perturb_cmd(
        input: Path = typer.Argument(..., help="Control cells (.h5ad)."),
        perturbation: str = typer.Option(..., "--perturbation", help='e.g. "knockout STAT1".'),
        model: Path = MODEL,
        out: Path = OUT,
        batch_size: int = typer.Option(32, min=1),
        min_overlap: float = typer.Option(0.5, min=0.0, max=1.0),
        false_claims: str = FALSE_CLAIMS,
        tasks: Path | None = TASKS,
        seed: int = typer.Option(0),
        overwrite: bool = OVERWRITE,
        genes: dict | None = None,
    ) -> None:
        """Predict each cell's response to a perturbation (sentence + expression in .obsm)."""
        from rich.console import Console

        from cellduality.inference import perturb

        _check_out(input, out, model, overwrite)
        result = perturb(_read(input), str(model), perturbation, false_claims=false_claims, tasks_dir=_path(tasks), batch_size=batch_size, min_overlap=min_overlap,
                         seed=seed, **genes)
        _write(result, out)
        consistent = float(result.obs["cellduality_consistent"].mean())
        Console().print(f"Wrote {out}: .obs['cellduality_perturbed_sentence'], .obsm['cellduality_perturbed'] "
                        f"({consistent:.0%} read back as the requested perturbation by the dual task).")
