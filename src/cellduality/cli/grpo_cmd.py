"""``cellduality grpo``: Stage 2, GRPO with the duality reward (or, for the oracle baseline, the ground-truth reward)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("grpo")
    def grpo(
        tasks_dir: Path = typer.Argument(..., help="Tasks folder from `cellduality tasks build` (rl/ or rl_oracle/ "
                                                "inside it is picked by --reward)."),
        out_dir: Path = typer.Argument(..., help="Output folder: final model, metrics.json, curves, checkpoints."),
        sft_model: Path | None = typer.Option(None, "--sft-model", help="The Stage-1 model folder (`cellduality sft`)."),
        reward: str | None = typer.Option(None, help="duality (self-supervised, default) or ground-truth (oracle)."),
        max_steps: int | None = typer.Option(None, min=1, help="Optimiser steps (overrides the config)."),
        config: Path | None = typer.Option(None, help="YAML of GRPO settings, e.g. configs/grpo.yaml."),
        set_: list[str] | None = typer.Option(None, "--set", help="KEY=VALUE (YAML value), repeatable: any GRPO "
                                              "setting or trl.GRPOConfig field, e.g. --set top_k=50; wins over --config."),
        resume: bool = typer.Option(False, help="Continue an interrupted run from its last checkpoint."),
        dry_run: bool = typer.Option(False, help="Resolve config, data and model folder, then stop (no training)."),
        num_processes: int | None = typer.Option(None, min=1, help="--dry-run only: resolve for this many processes "
                                                 "(e.g. 8 GPUs); a real run takes it from accelerate."),
    ) -> None:
        """Train the SFT model with GRPO on unlabeled prompts, rewarded by task duality (paper §3.4)."""
        from rich.console import Console

        from cellduality.config import load_config, parse_assignments
        from cellduality.errors import ConfigError
        from cellduality.training.common import is_main_process
        from cellduality.training.grpo import GRPOSettings, run_grpo
        from cellduality.training.grpo import dry_run as do_dry_run

        console = Console()
        settings = load_config(GRPOSettings, config, **{**parse_assignments(set_), "reward": reward,
                                                        "max_steps": max_steps})
        if dry_run:
            summary = do_dry_run(tasks_dir, out_dir, sft_model, settings, n_processes=num_processes)
            console.print_json(json.dumps(summary, default=str))
            return
        if sft_model is None:
            raise ConfigError("Missing --sft-model; pass the folder written by `cellduality sft`.")
        main = is_main_process()  # under torchrun/accelerate only rank 0 reports
        if main:
            console.print(f"[bold]GRPO[/] ({settings.reward} reward) from {sft_model} -> {out_dir}")
        metrics = run_grpo(tasks_dir, out_dir, sft_model, settings, resume=resume)
        if not main:
            return
        history = metrics["history"]
        first, last = (history[0]["reward"], history[-1]["reward"]) if history else (float("nan"),) * 2
        timing = metrics["timing"]
        console.print(
            f"[green]Done[/]: {metrics['global_step']} steps, reward {first:.3f} -> {last:.3f}, "
            f"{timing['seconds_per_step']:.2f} s/step, reward share {metrics['reward_time_fraction']:.1%}; "
            f"model and metrics.json in {out_dir}"
        )
