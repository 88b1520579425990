"""Entry point of the ``cellduality`` command.

Every command module exposes ``register(app)``; this file only assembles them and turns
:class:`~cellduality.errors.CellDualityError` into a one-line red message with exit code 2
(no traceback for user errors). Ctrl-C exits 130 with a hint that re-running resumes.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

# OpenMP threads that spin while waiting make torch many times slower when the 2-4 cores of a
# laptop or CI runner are shared (measured in benchmarks/bench_sft.py); passive waiting costs
# nothing on an idle machine. Set before torch is imported by any command.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Third-party progress bars (datasets' map/filter/save bars inside TRL, transformers' "Loading
# weights" / "Writing model shards") flood the log; our commands draw one rich line per long stage
# instead. Both libraries read these at import time, so they are set before any is imported.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import typer
from rich.console import Console
from rich.markup import escape

from cellduality.errors import CellDualityError
from cellduality.redaction import redact

app = typer.Typer(
    name="cellduality",
    help="CellDuality: language models that reason about single cells, trained with self-supervised RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules register their commands in this order (it is also the order of `--help`).
_COMMAND_MODULES = (
    "quickstart_cmd",
    "sentences_cmd",
    "tasks_cmd",
    "teach_cmd",
    "sft_cmd",
    "grpo_cmd",
    "evaluate_cmd",
    "diagnose_cmd",
    "benchmark_cmd",
    "inference_cmd",
    "adapt_cmd",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"cellduality.cli.{_name}").register(app)


@app.callback()
def _root() -> None:
    """CellDuality: language models that reason about single cells, trained with self-supervised RL."""


@app.command("version")
def version() -> None:
    """Print the CellDuality version."""
    from cellduality import __version__

    typer.echo(__version__)


def _quiet_imported_libraries() -> None:
    """The progress-bar switches of libraries imported before this module (the environment
    variables above only reach imports that come after it, e.g. when embedded in Python)."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one red line and exit code 2."""
    err = Console(stderr=True)
    # transformers' own renames (gradient_checkpointing -> activation_checkpointing, ...) are for its
    # callers to fix, not for a user to read at every run.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    _quiet_imported_libraries()
    try:
        # standalone mode: typer/click print usage errors themselves (exit 2).
        app(args=argv, standalone_mode=True)
    except CellDualityError as exc:
        err.print(f"[bold red]Error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.show_cursor(True)  # a progress bar may have hidden it
        err.print(f"[yellow]Interrupted.[/] {resume_hint(sys.argv[1:] if argv is None else argv)}",
                  highlight=False, soft_wrap=True)
        sys.exit(130)


def resume_hint(args: list[str]) -> str:
    """One line telling how to continue an interrupted command (the exact command line to run)."""
    import shlex

    line = "cellduality " + " ".join(shlex.quote(a) for a in args)
    command = args[0] if args else ""
    if command in ("sft", "grpo", "adapt"):
        return f"Checkpoints are kept; resume with: {line}{'' if '--resume' in args else ' --resume'}"
    if command in ("teach", "quickstart", "benchmark"):
        return f"Finished work is kept; resume by re-running: {line}"
    return "No output was half-written (outputs appear only when complete); re-run the command to start again."

if __name__ == "__main__":
    main()
