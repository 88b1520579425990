"""``cellduality quickstart``: the whole pipeline on the embedded default data, resumable."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        out: Path = typer.Option(Path("quickstart_out"), "--out", help="Folder for data, models, report and plots."),
        config: Path | None = typer.Option(None, "--config", help="YAML overriding configs/quickstart.yaml."),
        sensitivity_data: Path | None = typer.Option(
            None, help="Also train drug sensitivity on this .h5ad (obs: sensitivity label + drug)."),
        sensitivity_label_key: str = typer.Option("sensitivity", help="Label column of --sensitivity-data."),
        drug_key: str = typer.Option("drug", help="Drug column of --sensitivity-data."),
        perturbation_data: Path | None = typer.Option(
            None, help="Also train perturbation response on this .h5ad (control + perturbed cells)."),
        perturbation_key: str = typer.Option("perturbation", help="Perturbation column of --perturbation-data."),
        control_value: str = typer.Option("control", help="Value of the control cells in that column."),
        group_key: str | None = typer.Option(None, help="Pair perturbed with control cells within this column."),
        gene_map: Path | None = typer.Option(None, help="Id -> symbol table for the extra data (Ensembl/Entrez ids)."),
        fresh: bool = typer.Option(False, help="Delete OUT first instead of resuming."),
    ) -> None:
        """Run sentences → tasks → teacher → SFT → duality & oracle GRPO → evaluation, then print a summary."""
        from rich.console import Console

        from cellduality.outputs import claim_resumable_dir
        from cellduality.pipeline.quickstart import (
            DatasetSettings,
            load_quickstart_settings,
            reset,
            run_quickstart,
        )
        from cellduality.pipeline.summary import print_summary

        console = Console()
        inputs = [config, sensitivity_data, perturbation_data, gene_map]
        claim_resumable_dir(out, "quickstart", inputs=inputs)  # OUT is new/empty or an earlier quickstart
        if fresh:
            reset(out)
            claim_resumable_dir(out, "quickstart", inputs=inputs)
        settings = load_quickstart_settings(config)
        extra: dict[str, DatasetSettings] = {}
        if sensitivity_data is not None:
            extra["sensitivity_data"] = DatasetSettings(
                source=str(sensitivity_data), tasks=["sensitivity"], label_key=sensitivity_label_key,
                drug_key=drug_key, gene_map=str(gene_map) if gene_map else None)
        if perturbation_data is not None:
            extra["perturbation_data"] = DatasetSettings(
                source=str(perturbation_data), tasks=["perturbation"], perturbation_key=perturbation_key,
                control_value=control_value, group_key=group_key, gene_map=str(gene_map) if gene_map else None)
        summary = run_quickstart(out, settings, console=console, extra_datasets=extra)
        print_summary(summary, out, console)
