"""What every trainer here shares: device-safe TRL arguments, resume, progress, loss curves.

TRL's ``SFTConfig``/``GRPOConfig`` default to ``bf16=True`` and ``gradient_checkpointing=True``;
on a CPU the first makes a step ~17x slower and the second only costs time (STACK.md pitfall 1).
:func:`device_args` picks values from the hardware actually present, so the same code runs on a
laptop, a GPU box and under ``accelerate launch`` unchanged.

Layout of a training output folder: ``OUT_DIR/checkpoints/checkpoint-N`` (TRL checkpoints,
resumable), ``OUT_DIR/loss.png`` + ``OUT_DIR/log_history.json``, and the final model in
``OUT_DIR`` itself (see :func:`cellduality.models.save_cellduality_model`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.models.loading import INFO_FILE

CHECKPOINTS = "checkpoints"
LOSS_PLOT = "loss.png"
LOG_HISTORY = "log_history.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def is_main_process() -> bool:
    """True on the process that prints, writes files and shows progress (rank 0; the only one
    without a launcher). ``torchrun`` and ``accelerate launch`` set ``RANK`` for every process."""
    return int(os.environ.get("RANK", "0")) == 0


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device_args(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a TRL config that are right for this machine.

    CPU: ``use_cpu=True``, float32, no gradient checkpointing, no pinned memory. GPU: bf16 when
    supported (fp16 otherwise). Logging goes through our rich callback, not tqdm; nothing is
    reported to external trackers unless asked. ``overrides`` win.
    """
    import torch

    cuda = cuda_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    args: dict[str, Any] = {
        "use_cpu": not cuda,
        "bf16": bf16,
        "fp16": cuda and not bf16,
        "gradient_checkpointing": False,
        "dataloader_pin_memory": cuda,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "steps",
        "logging_strategy": "steps",
        "logging_first_step": True,
    }
    args.update(overrides)
    return args


# --------------------------------------------------------------------------------------------
# Output folder and resume
# --------------------------------------------------------------------------------------------


def checkpoint_dir(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / CHECKPOINTS


def last_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest *complete* checkpoint in ``OUT_DIR/checkpoints`` (or ``None``).

    Transformers writes ``trainer_state.json`` last, so a checkpoint cut by a crash (kill -9
    while saving) lacks a valid one and is skipped: resume falls back to the previous one.
    """
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and _valid_state(child / "trainer_state.json"):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def _valid_state(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def prepare_output_dir(out_dir: str | os.PathLike[str], resume: bool, command: str = "cellduality sft", *,
                       inputs: tuple[Any, ...] = (), fingerprint: dict[str, Any] | None = None) -> Path | None:
    """Apply the output policy to ``out_dir`` and return the checkpoint to resume from (or ``None``).

    Without ``resume`` a folder that already holds a run is an error rather than silently
    overwritten; ``resume`` continues only this command's own run (never e.g. an SFT model folder
    given to ``grpo``) and only with the same ``fingerprint`` (inputs + settings); with no
    checkpoint yet, training starts from scratch. The caller stores the fingerprint with
    :func:`cellduality.outputs.record_fingerprint` once its model loaded (a bad model leaves no folder).

    Under ``torchrun``/``accelerate launch`` only rank 0 applies the policy: the other ranks reach
    this point at their own pace, and by then rank 0's trainer may already have created
    ``checkpoints/`` or the marker, which they would take for someone else's run (seen in CI as
    a refused rank 1). A refusal on rank 0 ends the launch; the launcher stops the
    other ranks. They only read the checkpoint to resume from, which no rank writes before training.
    """
    from cellduality.outputs import check_fingerprint, check_output_dir

    out = Path(out_dir)
    if not is_main_process():
        return last_checkpoint(out) if resume else None
    name = command.removeprefix("cellduality ")
    check_output_dir(out, name, inputs=inputs, resume=resume)
    checkpoint = last_checkpoint(out)
    if not resume and (checkpoint is not None or (out / INFO_FILE).is_file()):
        raise CellDualityError(
            f"{out} already holds a training run; pass --resume to continue it, or choose a new OUT_DIR "
            f"for a fresh `{command}`."
        )
    check_fingerprint(out, fingerprint or {}, resume)  # recorded by the trainer once it is built
    return checkpoint if resume else None


def resumed_steps(checkpoint: Path | None) -> int:
    """``global_step`` stored in a checkpoint (0 for ``None``)."""
    if checkpoint is None:
        return 0
    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))


# --------------------------------------------------------------------------------------------
# Progress and plots
# --------------------------------------------------------------------------------------------


def progress_callbacks() -> list[Any]:
    """Callbacks that replace the tqdm bar with TRL's rich progress display."""
    from trl.trainer.callbacks import RichProgressCallback

    return [RichProgressCallback()]


def use_rich_progress(trainer: Any) -> None:
    """Swap the default tqdm/printer callbacks of ``trainer`` for the rich progress display."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    for cb in progress_callbacks():
        trainer.add_callback(cb)


def save_log_history(log_history: list[dict[str, Any]], out_dir: str | os.PathLike[str]) -> Path:
    """Write the trainer's log history as JSON (atomically) for later plots and reports."""
    path = Path(out_dir) / LOG_HISTORY
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(log_history, indent=1))
    os.replace(tmp, path)
    return path


def plot_loss_curve(
    log_history: list[dict[str, Any]],
    path: str | os.PathLike[str],
    keys: tuple[str, ...] = ("loss", "eval_loss"),
    title: str = "Training loss",
) -> Path | None:
    """Plot ``keys`` of a trainer log history against the step; ``None`` when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        key: [(row["step"], row[key]) for row in log_history if key in row and "step" in row] for key in keys
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in series.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
