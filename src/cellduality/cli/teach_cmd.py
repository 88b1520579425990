"""``cellduality teach``: chain-of-thought SFT data from a teacher, filtered (paper §3.3.1)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cellduality.errors import CellDualityError


def teach(
    tasks_dir: Path = typer.Argument(..., help="Folder written by `cellduality tasks build`."),
    out_dir: Path = typer.Argument(..., help="Where to write the SFT DatasetDict (prompt, completion, task, direction, id)."),
    teacher: str | None = typer.Option(None, help="offline (default, no API) or openai (any OpenAI-compatible server)."),
    n: int | None = typer.Option(None, min=1, help="Candidates per prompt (default 4)."),
    model: str | None = typer.Option(None, help="openai: model name."),
    base_url: str | None = typer.Option(None, help="openai: server URL, e.g. http://localhost:8000/v1 for vLLM."),
    temperature: float | None = typer.Option(None, min=0, help="Sampling temperature (default 0.5 offline, 0.8 openai)."),
    concurrency: int | None = typer.Option(None, min=1, help="openai: requests in flight."),
    threshold: float | None = typer.Option(None, min=0, max=1, help="RWJS a generated cell needs to be kept (default 0.4)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with any TeachConfig key (flags win)."),
    max_examples: int | None = typer.Option(None, min=1, help="At most this many prompts per task and split."),
    seed: int | None = typer.Option(None, help="Seed of the offline teacher and of row sampling."),
    overwrite: bool = typer.Option(False, help="Replace OUT_DIR if it holds an earlier `cellduality teach` output."),
) -> None:
    """Teacher -> rejection sampling / rank-aware filtering -> primal + dual SFT rows; resumes when re-run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cellduality.config import load_config, validate_config
    from cellduality.teacher.build import REPORT_FILE, build_sft
    from cellduality.teacher.config import TeachConfig

    if not tasks_dir.is_dir():
        raise CellDualityError(f"{tasks_dir} is not a folder; pass the output of `cellduality tasks build`.")
    from cellduality.outputs import check_output_dir

    check_output_dir(out_dir, "teach", inputs=[tasks_dir], overwrite=overwrite)
    if teacher is not None and teacher not in ("offline", "openai"):
        raise CellDualityError(f"--teacher {teacher}: choose offline or openai.")
    flags = dict(teacher=teacher, n=n, model=model, base_url=base_url, temperature=temperature,
                 concurrency=concurrency, threshold=threshold, max_examples=max_examples, seed=seed)
    # `model` is also load_config's first parameter, so flags are merged here, not passed as kwargs.
    data = load_config(TeachConfig, config).model_dump(exclude_unset=True)
    data.update({k: v for k, v in flags.items() if v is not None})
    cfg = validate_config(TeachConfig, data, source=str(config) if config else "options")
    console = Console(width=None if sys.stdout.isatty() else 120)  # the report table needs ~100 columns
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(f"teach {stage}", total=total)
            bar.update(bars[stage], completed=done, total=total)

        report = build_sft(tasks_dir, out_dir, cfg, overwrite=overwrite, on_progress=on_progress)
    print_report(report, console)
    console.print(f"SFT data in {out_dir} (report: {out_dir / REPORT_FILE})")


def print_report(report: dict, console) -> None:
    """Acceptance rates per split, task and direction, plus teacher usage."""
    from rich.table import Table

    table = Table(title="Teacher acceptance (accepted candidates / candidates)")
    for name in ("split", "task", "dir", "prompts", "cands", "accepted", "rate", "kept", "score", "failed"):
        table.add_column(name, justify="left" if name in ("split", "task", "dir") else "right", no_wrap=True)
    for row in report["acceptance"]:
        table.add_row(row["split"], row["task"], row["direction"], str(row["prompts"]), str(row["candidates"]),
                      str(row["accepted"]), f"{100 * row['acceptance_rate']:.1f}%", str(row["prompts_kept"]),
                      f"{row['mean_score']:.3f}", str(row["failures"]))
    console.print(table)
    usage = report["usage"]
    if usage.get("api_calls") or usage.get("cache_hits"):
        console.print(f"teacher: {usage['api_calls']} API calls, {usage['cache_hits']} cache hits, "
                      f"{usage['retries']} retries, {usage['prompt_tokens']}+{usage['completion_tokens']} tokens, "
                      f"${usage['cost_usd']:.4f}")


def register(app: typer.Typer) -> None:
    """Add ``teach`` to ``app``."""
    app.command("teach")(teach)
