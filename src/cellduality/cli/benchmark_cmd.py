"""``cellduality benchmark``: SFT-only vs duality RL vs oracle RL (+ baselines) over datasets and seeds."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark(
        out: Path = typer.Option(Path("benchmark_out"), "--out", help="Folder for every run and the tables."),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Folder with the offline datasets (default: $CELLDUALITY_DATA_DIR or ../shared/data)."),
        seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per configuration (tables give mean ± std)."),
        budget: str = typer.Option("small", "--budget", help="tiny (smoke test), small (~30 min on 2 CPU cores), full."),
        dataset: list[str] = typer.Option([], "--dataset", help="Only these datasets (repeatable)."),
        generalist: bool = typer.Option(False, help="Also train one model on the mixture of all training sets."),
        ood: list[str] = typer.Option([], "--ood", help="Keep this dataset out of the generalist's training (repeatable)."),
        config: Path | None = typer.Option(None, "--config", help="A budget YAML instead of --budget."),
    ) -> None:
        """Reproduce the shape of the paper's Table 6 on the data available here; resumable."""
        from rich.console import Console

        from cellduality.outputs import claim_resumable_dir
        from cellduality.pipeline.benchmark import run_benchmark
        from cellduality.pipeline.summary import summary_tables

        claim_resumable_dir(out, "benchmark", inputs=[data_dir, config])  # new/empty, or an earlier benchmark
        console = Console()
        tables = run_benchmark(out, data_dir=data_dir, seeds=seeds, budget=budget, datasets=dataset or None,
                               generalist=generalist, ood=ood, config=config, console=console)
        for name, table in tables.items():
            for rendered in summary_tables(table, title=name):
                console.print(rendered)
        console.print(f"Tables: {out / 'table.md'} (and per dataset under {out / 'tables'})")
