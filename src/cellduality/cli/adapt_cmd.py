"""``cellduality adapt MODEL CELLS.h5ad OUT``: label-free adaptation to your own cells (issue #12)."""

from __future__ import annotations

from pathlib import Path

import typer

from cellduality.cli.sentences_cmd import with_gene_options


def register(app: typer.Typer) -> None:
    """Add the ``adapt`` command to ``app``."""

    @app.command("adapt")
    @with_gene_options
    def adapt_cmd(
        model: Path = typer.Argument(..., help="A model folder written by `cellduality sft` (or `grpo`)."),
        cells: Path = typer.Argument(..., help="Your cells (.h5ad); labels are not needed and never read."),
        out: Path = typer.Argument(..., help="New output folder: tasks/, diagnostics.json, model/ (the adapted "
                                             "model), adapt.json."),
        steps: int | None = typer.Option(None, min=1, help="Optimiser steps (default: the recipe's max_steps)."),
        wall_time: str | None = typer.Option(None, "--wall-time", help="Stop training after this long, e.g. 30m, "
                                             "2h (whichever of --steps and --wall-time comes first)."),
        drug_key: str | None = typer.Option(None, help=".obs column naming each cell's drug: adapt sensitivity too."),
        drug: str | None = typer.Option(None, help="One drug for every cell: adapt sensitivity too."),
        control_key: str | None = typer.Option(None, help=".obs column marking control cells: adapt perturbation too."),
        control_value: str = typer.Option("control", help="Value of --control-key that marks control cells."),
        max_cells: int | None = typer.Option(None, min=1, help="Use at most this many cells (seeded sample)."),
        min_overlap: float = typer.Option(0.5, min=0.0, max=1.0, help="Stop if fewer of the model's genes are "
                                          "expressed in your cells."),
        diagnose_cells: int = typer.Option(64, min=0, help="Cells for the label-free diagnostics (0: skip)."),
        config: Path | None = typer.Option(None, help="YAML of GRPO settings replacing the default recipe."),
        set_: list[str] | None = typer.Option(None, "--set", help="KEY=VALUE GRPO setting, repeatable (wins over "
                                              "--config)."),
        annotate: bool = typer.Option(False, "--annotate", help="Also write OUT/annotated.h5ad: a copy of your "
                                      "cells annotated by the adapted model."),
        seed: int = typer.Option(0, help="Seed of the prompts, the diagnostics and training."),
        resume: bool = typer.Option(False, help="Continue an interrupted adaptation (same inputs only)."),
        genes: dict | None = None,
    ) -> None:
        """Adapt a trained model to your unlabelled cells with the duality reward (no labels needed)."""
        from rich.console import Console
        from rich.markup import escape

        from cellduality.adaptation import adapt
        from cellduality.config import load_config, parse_assignments
        from cellduality.training.grpo import GRPOSettings

        console = Console()
        settings = load_config(GRPOSettings, config, **parse_assignments(set_))
        summary = adapt(str(cells), model, out, steps=steps, wall_time=wall_time, seed=seed, settings=settings,
                        drug_key=drug_key, drug=drug, control_key=control_key, control_value=control_value,
                        max_cells=max_cells, min_overlap=min_overlap, diagnose_cells=diagnose_cells,
                        annotate=annotate, resume=resume, echo=lambda line: console.print(escape(line), soft_wrap=True),
                        **(genes or {}))
        console.print(f"[green]Done[/]: annotate with `cellduality annotate CELLS.h5ad --model {summary['model']} "
                      "--out annotated.h5ad`" + (f"; annotations in {summary['annotated']}" if summary["annotated"]
                                                 else ""), highlight=False)
