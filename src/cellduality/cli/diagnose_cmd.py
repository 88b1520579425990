"""``cellduality diagnose MODEL_DIR TASKS_DIR``: can the duality reward teach this model anything?"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``diagnose`` command to ``app``."""

    @app.command("diagnose")
    def diagnose(
        model_dir: Path = typer.Argument(..., help="Model folder (usually the SFT model, before GRPO)."),
        tasks_dir: Path = typer.Argument(..., help="Tasks folder from `cellduality tasks build`."),
        out: Path = typer.Option(None, "--out", help="Also write the report as JSON to this new file."),
        reward: str = typer.Option("likelihood", help="Duality reward to diagnose: likelihood or paper."),
        split: str = typer.Option("test", help="Split of the primal rows to use."),
        max_examples: int = typer.Option(200, min=1, help="Prompts per task (seeded sample)."),
        num_generations: int = typer.Option(8, min=2, help="G: sampled answers per prompt (as in GRPO)."),
        temperature: float = typer.Option(1.0, min=1e-6, help="Sampling temperature (as in GRPO)."),
        max_completion_length: int = typer.Option(192, min=1, help="Longest sampled answer."),
        likelihood_temperature: float = typer.Option(1.0, min=1e-6, help="Softmax temperature of the likelihood reward."),
        likelihood_calibration: bool = typer.Option(
            False, "--likelihood-calibration", help="Calibrate the likelihood reward by the dual's mean posterior "
            "per candidate (GRPO setting likelihood_calibration)."),
        task: list[str] = typer.Option(None, "--task", help="Only these tasks (repeatable)."),
        seed: int = typer.Option(0, help="Seed of sampling and of the wrong candidates."),
    ) -> None:
        """Reward diagnostics before RL: right-vs-wrong AUC, own-answer AUC, zero-spread groups."""
        from rich.console import Console
        from rich.table import Table

        from cellduality.errors import CellDualityError
        from cellduality.evaluation.reward_diagnostics import diagnose_rewards
        from cellduality.rewards import DUAL_REWARDS

        if reward not in DUAL_REWARDS:
            raise CellDualityError(f"--reward must be one of {', '.join(DUAL_REWARDS)}, not '{reward}'.")
        if out is not None and out.exists():
            raise CellDualityError(f"{out} already exists; choose a new file for --out.")
        report = diagnose_rewards(model_dir, tasks_dir, mode=reward, split=split, max_examples=max_examples,
                                  num_generations=num_generations, temperature=temperature,
                                  max_completion_length=max_completion_length, seed=seed,
                                  likelihood_temperature=likelihood_temperature,
                                  likelihood_calibration=likelihood_calibration, only=task or None)
        table = Table(title=f"duality reward '{reward}' on {split} (G={num_generations}, T={temperature})")
        for column in ("task", "right-vs-wrong AUC", "own-answer AUC / ρ", "zero-spread groups",
                       "sampled ground-truth score", "malformed"):
            table.add_column(column, justify="right" if column != "task" else "left")

        def fmt(value: float | None, pct: bool = False) -> str:
            return "–" if value is None else f"{100 * value:.1f}%" if pct else f"{value:.3f}"

        for name, r in report["tasks"].items():
            own = r.get("own_answer_auc", r.get("own_answer_spearman"))
            table.add_row(name, fmt(r["right_vs_wrong_auc"]), fmt(own), fmt(r["zero_spread_share"], True),
                          fmt(r["sampled_ground_truth_score"]), fmt(r["malformed_share"], True))
        console = Console()
        console.print(table)
        for name, r in report["tasks"].items():
            auc = r["right_vs_wrong_auc"]
            if auc is not None and auc < 0.6:
                console.print(f"[yellow]{name}[/]: the reward barely separates right from wrong answers "
                              f"(AUC {auc:.2f}); GRPO with it is unlikely to improve this task.")
            if r["zero_spread_share"] > 0.5:
                console.print(f"[yellow]{name}[/]: {100 * r['zero_spread_share']:.0f}% of groups have no reward "
                              "spread (no gradient); raise the temperature or G.")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1))
            console.print(f"[green]Wrote[/] {out}")
