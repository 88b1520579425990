"""``cellduality sentences`` (AnnData -> cell-sentence folder) and ``cellduality datasets list``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cellduality.cli.options import option, option_group

datasets_app = typer.Typer(help="The paper's benchmark datasets and the sets that work offline.",
                           no_args_is_help=True)

# How a user's genes and values are read; shared with the inference commands (annotate, ...), which
# must rank a user's cells exactly as `sentences` would.
GENE_MAP = typer.Option(None, "--gene-map", help="Table mapping Ensembl/Entrez ids to symbols (CSV/TSV).")
GENE_ID_COLUMN = typer.Option(None, "--gene-id-column", help=".var column holding gene symbols.")
ORTHOLOGS = typer.Option(None, "--orthologs", help="Mouse -> human ortholog table (CSV/TSV).")
LAYER = typer.Option(None, "--layer", help="Rank this layer instead of .X.")
USE_RAW = typer.Option(None, "--use-raw/--no-use-raw", help="Rank .raw (default: when .raw exists and .X is scaled).")
EXPRESSION = typer.Option("auto", "--expression", help="What the values are: auto, counts, log1p, tpm, scaled.")


def gene_options(gene_map: Path | None, gene_id_column: str | None, orthologs: Path | None, layer: str | None,
                 use_raw: bool | None, expression: str) -> dict:
    """The options above as keyword arguments of :func:`cellduality.sentences.to_sentences` (unset ones left out)."""
    values = {"gene_map": str(gene_map) if gene_map else None, "gene_id_column": gene_id_column,
              "orthologs": str(orthologs) if orthologs else None, "layer": layer, "use_raw": use_raw,
              "expression": None if expression == "auto" else expression}
    return {k: v for k, v in values.items() if v is not None}


_GENE_PARAMETERS = [
    option(name, default, annotation)
    for name, default, annotation in (
        ("gene_map", GENE_MAP, Optional[Path]), ("gene_id_column", GENE_ID_COLUMN, Optional[str]),  # noqa: UP045
        ("orthologs", ORTHOLOGS, Optional[Path]), ("layer", LAYER, Optional[str]),  # noqa: UP045
        ("use_raw", USE_RAW, Optional[bool]), ("expression", EXPRESSION, str))  # noqa: UP045
]

with_gene_options = option_group(_GENE_PARAMETERS, "genes", gene_options)
"""Give a command the gene-id options above; it receives them as ``genes=`` (see :func:`gene_options`).

Used by the inference commands, so a user with Ensembl ids or mouse cells annotates with the
same flags as ``sentences``."""


def sentences(
    source: str = typer.Argument(..., help="An .h5ad file, or a built-in name (pbmc68k_reduced, kang2018, "
                                           "papalexi2021, a375_plx4720, baron2016, he2020_liver, tirosh2016)."),
    out_dir: Path = typer.Argument(..., help="Folder to write (a Hugging Face dataset + JSON files)."),
    top_k: int = typer.Option(100, "--top-k", min=0, help="Genes per sentence (0 = every nonzero gene)."),
    label_key: list[str] = typer.Option(None, "--label-key", help=".obs column(s) to keep as labels (repeatable)."),
    perturbation_key: str | None = typer.Option(None, help=".obs column naming each cell's perturbation."),
    control_value: str | None = typer.Option(None, help="Value of --perturbation-key that marks control cells."),
    group_key: str | None = typer.Option(None, help=".obs column controls are matched on (cell type/line)."),
    drug_key: str | None = typer.Option(None, help=".obs column naming the drug."),
    keep_obs: list[str] = typer.Option(None, "--keep-obs", help="Other .obs columns to keep (repeatable)."),
    gene_map: Path | None = GENE_MAP,
    gene_id_column: str | None = GENE_ID_COLUMN,
    orthologs: Path | None = ORTHOLOGS,
    layer: str | None = LAYER,
    use_raw: bool | None = USE_RAW,
    expression: str = EXPRESSION,
    seed: int = typer.Option(0, help="Seed for tie-breaking and the train/test split."),
    test_size: float = typer.Option(0.2, min=0.0, max=0.95, help="Fraction of cells in the test split."),
    overwrite: bool = typer.Option(False, help="Replace OUT_DIR if it holds an earlier `cellduality sentences` output."),
) -> None:
    """Turn single cells into cell sentences (top-K genes, most expressed first)."""
    from rich.console import Console

    from cellduality.datasets import load_dataset
    from cellduality.outputs import check_output_dir
    from cellduality.sentences import build_cell_sentences

    console = Console(stderr=True)
    check_output_dir(out_dir, "sentences", inputs=[source] if Path(source).exists() else [], overwrite=overwrite)
    adata, defaults = load_dataset(source)
    label_keys = list(label_key or []) or ([defaults["label_key"]] if defaults.get("label_key") else [])
    with console.status("ranking genes and fitting the inverse model..."):
        cells = build_cell_sentences(
            adata, top_k=top_k or None, label_keys=label_keys,
            perturbation_key=perturbation_key or defaults.get("perturbation_key"),
            control_value=control_value if control_value is not None else defaults.get("control_value"),
            group_key=group_key or defaults.get("group_key"), drug_key=drug_key or defaults.get("drug_key"),
            keep_obs=list(keep_obs or []), gene_map=gene_map or defaults.get("gene_map"),
            gene_id_column=gene_id_column, orthologs=orthologs, layer=layer,
            use_raw=use_raw if use_raw is not None else defaults.get("use_raw"), expression=expression,
            seed=seed, test_size=test_size, source=str(source))
    cells.save(out_dir)
    meta, fid = cells.meta, cells.meta["inverse_fidelity"]
    for key, n in (meta.get("missing_labels") or {}).items():
        if n:
            console.print(f"[yellow]Labels:[/] {n} cells have no '{key}' label; they are kept for unlabelled use "
                          "and left out of labelled task splits.", highlight=False)
    if not cells.splits["test"].size:
        console.print("[yellow]Split:[/] the test split is empty (--test-size); `evaluate` will need one.")
    for note in meta["gene_notes"]:
        console.print(f"[yellow]Genes:[/] {note}", highlight=False)
    console.print(f"[green]Wrote[/] {meta['n_cells']} cell sentences to {out_dir} "
                  f"({meta['input_used']}; dropped {meta['n_dropped_empty']} empty cells).")
    console.print(f"Inverse (held-out): R² {fid['r2']}, Pearson {fid['pearson']}, Spearman {fid['spearman']} "
                  f"(Cell2Sentence line: R² {fid['c2s_linear']['r2']}).")


@datasets_app.command("list")
def list_datasets() -> None:
    """Print the registry: the paper's benchmarks and the offline sets."""
    from rich.console import Console
    from rich.table import Table

    from cellduality.datasets import BENCHMARKS, OFFLINE

    table = Table(title="CellDuality datasets", show_lines=False)
    for column in ("name", "species", "theme", "role", "labels", "accession", "citation", "download"):
        table.add_column(column, overflow="fold")
    for group, specs in (("benchmark", BENCHMARKS), ("offline", OFFLINE)):
        for spec in specs.values():
            how = "offline" if group == "offline" else ("url" if spec.url else "manual")
            table.add_row(spec.name, spec.species, spec.theme, spec.role, ", ".join(spec.label_columns) or "-",
                          spec.accession, spec.citation, how)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``sentences`` and the ``datasets`` sub-commands to ``app``."""
    app.command("sentences")(sentences)
    app.add_typer(datasets_app, name="datasets")
