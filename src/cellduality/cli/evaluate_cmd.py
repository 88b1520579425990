"""``cellduality evaluate MODEL_DIR TASKS_DIR OUT_DIR``: metrics, baselines, tables and plots."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to ``app``."""

    @app.command("evaluate")
    def evaluate(
        model_dir: Path = typer.Argument(..., help="CellDuality model folder (from `cellduality sft`/`grpo`)."),
        tasks_dir: Path = typer.Argument(..., help="Tasks folder from `cellduality tasks build` (its test split)."),
        out_dir: Path = typer.Argument(..., help="Where to write metrics.json, CSVs, report.md and PNGs."),
        task: list[str] = typer.Option(None, "--task", help="Evaluate only these tasks (repeatable)."),
        seed: int = typer.Option(0, help="Seed for sampling and sub-sampling."),
        sample: bool = typer.Option(False, "--sample/--greedy", help="Sample instead of greedy decoding."),
        temperature: float = typer.Option(1.0, min=0.0, help="Sampling temperature (with --sample)."),
        batch_size: int = typer.Option(16, min=1, help="Prompts per generate batch."),
        max_new_tokens: int = typer.Option(256, min=1, help="Longest completion."),
        max_examples: int = typer.Option(None, min=1, help="Evaluate at most this many test examples per task."),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also score classical baselines."),
        reward_validity: bool = typer.Option(True, "--reward-validity/--no-reward-validity",
                                             help="Measure how well the duality reward separates right from wrong."),
        overwrite: bool = typer.Option(False, help="Replace OUT_DIR if it holds an earlier `cellduality evaluate` output."),
        split: str = typer.Option("test", help="Split to evaluate: test, or validation (to choose checkpoints)."),
        dual_reward: str = typer.Option("likelihood", "--dual-reward",
                                        help="Duality reward whose validity is measured: likelihood or paper."),
        fast_labels: bool = typer.Option(False, "--fast-labels", help="Classification tasks: rank the labels by "
                                         "likelihood (no reasoning written; fast) instead of generating answers."),
        copy_aware: bool = typer.Option(False, "--copy-aware", help="Copy-aware decoding of the reasoning: stated "
                                        "ranks copied from the input cell; only its genes cited where the task "
                                        "allows (inference's default)."),
    ) -> None:
        """Evaluate a model on the test split: paper metrics, baselines, Markdown report and plots."""
        from rich.console import Console

        from cellduality.evaluation.evaluate import evaluate_model
        from cellduality.models.loading import read_model_info
        from cellduality.outputs import check_output_dir
        from cellduality.rewards import DUAL_REWARDS
        from cellduality.validation import require_test_rows

        if dual_reward not in DUAL_REWARDS:
            from cellduality.errors import CellDualityError

            raise CellDualityError(f"--dual-reward must be one of {', '.join(DUAL_REWARDS)}, not '{dual_reward}'.")

        # every check before the model is loaded: OUT never replaces the model, the tasks or a user's files
        check_output_dir(out_dir, "evaluate", inputs=[model_dir, tasks_dir], overwrite=overwrite)
        read_model_info(model_dir)
        if split == "test":
            require_test_rows(tasks_dir, task or None, "`cellduality evaluate`")
        results = evaluate_model(model_dir, tasks_dir, out_dir, seed=seed, do_sample=sample, temperature=temperature,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens, max_examples=max_examples,
                                 tasks=task or None, baselines=baselines, reward_validity=reward_validity,
                                 overwrite=True, split=split, fast_labels=fast_labels, dual_reward=dual_reward,
                                 copy_aware=copy_aware)
        console = Console()
        for name, metrics in results.items():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k and v == v)
            console.print(f"[bold]{name}[/]: {shown}")
        console.print(f"[green]Wrote[/] {out_dir}/metrics.json, report.md, predictions_*.csv and plots.")
