"""``cellduality sft``: supervised fine-tuning on teacher traces (heavy imports stay inside)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``sft`` command to ``app``."""

    @app.command("sft")
    def sft(
        sft_dir: Path = typer.Argument(..., help="SFT data folder written by `cellduality teach`."),
        out_dir: Path = typer.Argument(..., help="Output folder: the final model lands here (HF format)."),
        model: str = typer.Option(None, "--model", help="Preset (tiny, mini, small, base, ...) or a local HF model folder."),
        lora: bool = typer.Option(None, "--lora/--full", help="Train LoRA adapters (merged at the end) or all weights."),
        max_steps: int = typer.Option(None, "--max-steps", min=1, help="Stop after N optimizer steps (overrides --epochs)."),
        epochs: float = typer.Option(None, "--epochs", min=0.001, help="Passes over the training rows."),
        config: Path = typer.Option(None, "--config", help="YAML file with SFT settings (see configs/sft.yaml)."),
        set_: list[str] = typer.Option(None, "--set", help="KEY=VALUE (YAML value), repeatable: any SFT setting "
                                       "or trl.SFTConfig field, e.g. --set optim=adamw_torch_fused; wins over --config."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in OUT_DIR."),
    ) -> None:
        """Fine-tune a model on chain-of-thought SFT data (loss on completions only)."""
        import os

        # Spinning OpenMP threads collapse on an oversubscribed CPU (see docs/sft.md); must be set
        # before torch starts its thread pool, i.e. before the first torch import below.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from rich.console import Console

        from cellduality.config import load_config, parse_assignments
        from cellduality.training.common import is_main_process
        from cellduality.training.sft import SFTSettings, run_sft

        flags = {"model": model, "lora": lora, "max_steps": max_steps, "epochs": epochs}
        settings = load_config(SFTSettings, config, **{**parse_assignments(set_), **flags})
        summary = run_sft(sft_dir, out_dir, settings, resume=resume)
        if not is_main_process():  # under torchrun/accelerate only rank 0 reports
            return
        console = Console()
        if summary.get("rows_over_max_length"):
            console.print(f"[yellow]Note[/]: {summary['rows_over_max_length']} training rows were longer than "
                          "max_length tokens and left out (raise max_length in the config to keep them).")
        loss = summary["final_loss"]
        console.print(
            f"[green]SFT done[/]: {summary['steps']} steps ({summary['steps_this_run']} this run), "
            f"final loss {loss:.4f}, {summary['parameters'] / 1e6:.1f}M parameters -> {out_dir}"
            if loss is not None
            else f"[green]SFT done[/]: {summary['steps']} steps -> {out_dir}"
        )
