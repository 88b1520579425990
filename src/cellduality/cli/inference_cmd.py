"""``cellduality annotate | sensitivity | generate | perturb``: a trained model on your own cells.

Each reads an ``.h5ad`` (never modified), writes results into a copy's ``.obs``/``.obsm``/``.uns``
and saves it to ``--out``; the Python API is :mod:`cellduality.inference`.
"""

from __future__ import annotations

from pathlib import Path

import typer

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
N_SAMPLES_HELP = "Rerank method: answers sampled per cell for duality reranking (1 = greedy)."


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


def _summary(adata, column: str, console) -> None:
    from rich.table import Table

    counts = adata.obs[column].astype(str).value_counts()
    table = Table(title=f"{column} ({adata.n_obs} cells)")
    table.add_column("prediction")
    table.add_column("cells", justify="right")
    table.add_column("mean confidence", justify="right")
    conf = adata.obs.get("cellduality_confidence")
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


def _faithfulness_line(adata, task: str, console) -> None:
    """One line on how true the written reasoning is (see docs/faithfulness.md)."""
    run = adata.uns.get("cellduality", {}).get(task, {})
    if run.get("method") == "fast" and not run.get("explained"):
        console.print("Reasoning: not written (fast labels; pass --explain, or --explain-least-confident N).")
        return
    info = run.get("faithfulness", {})
    mean = info.get("mean_faithfulness")
    console.print(f"Reasoning: {'no checkable claim' if mean is None else f'{mean:.0%} of claims true'}; "
                  f"{info.get('cells_with_false_claims', 0)} cells with a false claim (--false-claims "
                  f"{info.get('false_claims')}); training-data claims {info.get('training_claims', 'unchecked')}.")


def register(app: typer.Typer) -> None:
    @app.command("annotate")
    @with_gene_options
    def annotate_cmd(
        input: Path = typer.Argument(..., help="Your cells (.h5ad)."),
        model: Path = MODEL,
        out: Path = OUT,
        method: str = METHOD,
        explain: bool = EXPLAIN,
        explain_least_confident: int = EXPLAIN_LEAST,
        n_samples: int = typer.Option(4, min=1, help=N_SAMPLES_HELP),
        temperature: float = typer.Option(0.8, min=0.0, help="Rerank method: sampling temperature of the answers."),
        batch_size: int = typer.Option(64, min=1, help="Cells per generation batch (reasoning)."),
        min_overlap: float = typer.Option(0.5, min=0.0, max=1.0, help="Stop if fewer of your genes are known to the model."),
        false_claims: str = FALSE_CLAIMS,
        tasks: Path | None = TASKS,
        seed: int = typer.Option(0),
        overwrite: bool = OVERWRITE,
        genes: dict | None = None,
    ) -> None:
        """Annotate cell types: labels and confidence, reasoning when asked (--explain, --method rerank)."""
        from rich.console import Console

        from cellduality.cli.progress import stage_progress
        from cellduality.inference import annotate

        _check_out(input, out, model, overwrite)
        _check_method(method, explain, explain_least_confident)
        console = Console()
        with stage_progress() as progress:
            result = annotate(_read(input), str(model), false_claims=false_claims, tasks_dir=_path(tasks),
                              n_samples=n_samples, temperature=temperature, batch_size=batch_size,
                              min_overlap=min_overlap, seed=seed, method=method, explain=explain,
                              explain_least_confident=explain_least_confident, progress=progress,
                              warn=lambda line: console.print(f"[yellow]Warning:[/] {line}", highlight=False), **genes)
        _write(result, out)
        _summary(result, "cellduality_cell_type", console)
        _faithfulness_line(result, "annotation", console)
        console.print(f"Wrote {out}: .obs['cellduality_cell_type', 'cellduality_reasoning', 'cellduality_confidence']")

    @app.command("sensitivity")
    @with_gene_options
    def sensitivity_cmd(
        input: Path = typer.Argument(..., help="Your cells (.h5ad)."),
        drug: str = typer.Option(..., "--drug", help="Drug name, as the model was trained on it."),
        model: Path = MODEL,
        out: Path = OUT,
        method: str = METHOD,
        explain: bool = EXPLAIN,
        explain_least_confident: int = EXPLAIN_LEAST,
        n_samples: int = typer.Option(4, min=1, help=N_SAMPLES_HELP),
        temperature: float = typer.Option(0.8, min=0.0),
        batch_size: int = typer.Option(64, min=1),
        min_overlap: float = typer.Option(0.5, min=0.0, max=1.0),
        false_claims: str = FALSE_CLAIMS,
        tasks: Path | None = TASKS,
        seed: int = typer.Option(0),
        overwrite: bool = OVERWRITE,
        genes: dict | None = None,
    ) -> None:
        """Predict sensitive/resistant to a drug: labels and confidence, reasoning when asked."""
        from rich.console import Console

        from cellduality.cli.progress import stage_progress
        from cellduality.inference import predict_sensitivity

        _check_out(input, out, model, overwrite)
        _check_method(method, explain, explain_least_confident)
        console = Console()
        with stage_progress() as progress:
            result = predict_sensitivity(_read(input), str(model), drug, false_claims=false_claims,
                                         tasks_dir=_path(tasks), n_samples=n_samples, temperature=temperature,
                                         batch_size=batch_size, min_overlap=min_overlap, seed=seed, method=method,
                                         explain=explain, explain_least_confident=explain_least_confident,
                                         progress=progress, warn=lambda line: console.print(
                                             f"[yellow]Warning:[/] {line}", highlight=False), **genes)
        _write(result, out)
        _summary(result, "cellduality_sensitivity", console)
        _faithfulness_line(result, "sensitivity", console)
        console.print(f"Wrote {out}: .obs['cellduality_sensitivity', 'cellduality_reasoning', 'cellduality_confidence']")

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
