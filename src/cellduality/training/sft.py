"""Stage 1 training: supervised fine-tuning on teacher traces (paper §3.3) with TRL's SFTTrainer.

Input is the SFT folder written by ``cellduality teach``: a ``DatasetDict`` (``train``, maybe
``test``) with prompt–completion columns, plus ``tasks.json`` / ``inverse.json`` /
``vocabulary.json``. Prompts are rendered with :func:`cellduality.models.format_prompt` (the same
text GRPO and inference will show the model) and the loss is on completion tokens only.

The model is a preset built here (its tokenizer trained on this very corpus + the gene
vocabulary) or any local Hugging Face causal LM, fully fine-tuned or with LoRA (merged at the end
so the output folder is a plain HF model). Checkpoints go to ``OUT_DIR/checkpoints`` and
``resume=True`` continues from the newest complete one; the final model lands in ``OUT_DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from cellduality.errors import CellDualityError
from cellduality.models.loading import PROMPT_SEPARATOR, format_prompt, load_model, lora_config
from cellduality.models.presets import PRESETS, build_model, count_parameters
from cellduality.outputs import record_fingerprint, run_fingerprint
from cellduality.training.common import (
    LOSS_PLOT,
    checkpoint_dir,
    device_args,
    plot_loss_curve,
    prepare_output_dir,
    resumed_steps,
    save_log_history,
    use_rich_progress,
)
from cellduality.training.trl_settings import TRLSettings

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, DatasetDict

SFT_COLUMNS = ("prompt", "completion")
SUMMARY_FILE = "sft_summary.json"


class SFTSettings(TRLSettings):
    """Everything ``cellduality sft`` can be told (YAML config keys; ``--set KEY=VALUE`` and flags override).

    Any field of ``trl.SFTConfig`` may be set too (e.g. ``neftune_noise_alpha``, ``optim``,
    ``lr_scheduler_kwargs``) and reaches the trainer unchanged
    (:class:`~cellduality.training.trl_settings.TRLSettings`). The fields declared here are
    CellDuality's own settings and the TRL fields whose default CellDuality chooses: this class
    body is the one place where the project's SFT defaults live.
    """

    trl_config: ClassVar[str] = "SFTConfig"
    derived: ClassVar[dict[str, str]] = {
        "num_train_epochs": "epochs",
        "per_device_train_batch_size": "batch_size",
        "per_device_eval_batch_size": "batch_size",
        "train_sampling_strategy": "group_by_length",
        "completion_only_loss": "the design (the loss is on completion tokens only)",
        "eval_strategy": "eval_steps",
    }

    model: str = Field("small", description="preset name or local Hugging Face model folder")
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: str | list[str] = "all-linear"
    learning_rate: float = Field(5e-4, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = Field(0.03, ge=0, description="a fraction of all steps when < 1")
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16)
    seed: int = 0
    save_steps: int = Field(200, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="evaluate on the test split every N steps")
    max_eval_rows: int = Field(256, ge=1)
    report_to: str | list[str] = "none"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the trained weights; on a GPU the trainer's bf16/fp16 mixed precision "
        "computes in half precision on top of them (half-precision weights lose small updates)")
    trust_remote_code: bool = False
    tokenizer_vocab_size: int = Field(4096, ge=300, description="learnt BPE part of a preset's tokenizer")
    group_by_length: bool = Field(
        True, description="batch rows of similar length (less padding computed; order still random per megabatch)"
    )
    padding_free: bool = Field(False, description="flatten each batch into one sequence (no padding)")

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0 or value < -1:  # 0 used to train one step, -2 the default schedule
            raise ValueError("max_steps must be a positive number of steps (or -1: train for `epochs`)")
        return value

    def lora_overrides(self) -> dict[str, Any]:
        return {
            "r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.lora_target_modules,
        }


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_sft_data(sft_dir: str | os.PathLike[str]) -> DatasetDict:
    """The ``DatasetDict`` of an SFT folder; one-line error when the folder is not one."""
    from datasets import DatasetDict, load_from_disk

    path = Path(sft_dir)
    hint = "make one with `cellduality teach TASKS_DIR OUT_DIR`"
    if not path.is_dir():
        raise CellDualityError(f"SFT data folder {path} does not exist; {hint}.")
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError):
        raise CellDualityError(f"{path} is not an SFT data folder (no saved dataset); {hint}.") from None
    if not isinstance(data, DatasetDict) or "train" not in data:
        raise CellDualityError(f"{path} is not an SFT data folder (no 'train' split); {hint}.")
    missing = [c for c in SFT_COLUMNS if c not in data["train"].column_names]
    if missing:
        raise CellDualityError(
            f"{path} is not an SFT data folder (missing column {', '.join(missing)}); {hint}."
        )
    if len(data["train"]) == 0:
        raise CellDualityError(f"SFT data folder {path} has no training rows; re-run `cellduality teach`.")
    return data


def gene_vocabulary(sft_dir: str | os.PathLike[str]) -> list[str]:
    """Gene symbols of the data lineage (``vocabulary.json`` keys + the tasks' gene contexts)."""
    path = Path(sft_dir)
    genes: set[str] = set()
    vocab = path / "vocabulary.json"
    if vocab.is_file():
        genes.update(json.loads(vocab.read_text()))
    tasks = path / "tasks.json"
    if tasks.is_file():
        for spec in json.loads(tasks.read_text()).get("tasks", {}).values():
            genes.update(spec.get("context", {}).get("genes", ()))
    return sorted(genes)


def _as_training_rows(dataset: Dataset, tokenizer: Any) -> Dataset:
    """Prompt rendered as the model sees it; completion starting on a token boundary."""

    def render(row: dict[str, str]) -> dict[str, str]:
        return {"prompt": format_prompt(tokenizer, row["prompt"]), "completion": row["completion"].lstrip()}

    extra = [c for c in dataset.column_names if c not in SFT_COLUMNS]
    return dataset.map(render, remove_columns=extra, desc="Formatting prompts")


def _drop_long_rows(dataset: Dataset, tokenizer: Any, max_length: int) -> Dataset:
    """Keep rows whose prompt+completion fit ``max_length`` tokens; the count left out is reported.

    TRL does not truncate padding-free batches and would silently cut padded ones; dropping is
    kinder than truncating, which would teach the model completions that stop before ``</answer>``.
    """

    def fits(batch: dict[str, list[str]]) -> list[bool]:
        texts = [p + c + (tokenizer.eos_token or "") for p, c in zip(batch["prompt"], batch["completion"], strict=True)]
        return [len(ids) <= max_length for ids in tokenizer(texts)["input_ids"]]

    kept = dataset.filter(fits, batched=True, desc="Dropping rows over max_length")
    if len(kept) == 0:
        raise CellDualityError(f"Every SFT row is longer than max_length={max_length} tokens; raise max_length.")
    if len(kept) < len(dataset):
        logging.getLogger(__name__).warning(
            "SFT: %d of %d rows are longer than max_length=%d tokens and were left out (raise max_length to keep them).",
            len(dataset) - len(kept), len(dataset), max_length)
    return kept


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _model_and_tokenizer(settings: SFTSettings, sft_dir: Path, data: DatasetDict, checkpoint: Path | None):
    if settings.model in PRESETS and checkpoint is not None:
        # Resume: the tokenizer must be the one the checkpoint was trained with, not a retrained one.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        return build_model(settings.model, tokenizer, seed=settings.seed), tokenizer
    texts = None
    genes = None
    if settings.model in PRESETS:
        train = data["train"]
        texts = (p + PROMPT_SEPARATOR + c.lstrip() for p, c in zip(train["prompt"], train["completion"], strict=True))
        genes = gene_vocabulary(sft_dir)
    model, tokenizer = load_model(
        settings.model,
        tokenizer_texts=texts,
        genes=genes,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        seed=settings.seed,
    )
    return model, tokenizer


def _sft_config(settings: SFTSettings, out_dir: Path, has_eval: bool):
    from trl import SFTConfig

    # every TRL field of the settings (ours that share a TRL name + pass-through keys), then the
    # values resolved here
    trl_values = {k: v for k, v in settings.trl_kwargs().items() if k not in ("eval_steps", "trust_remote_code", "max_length")}
    if has_eval and settings.eval_steps:
        trl_values.update(eval_strategy="steps", eval_steps=settings.eval_steps, per_device_eval_batch_size=settings.batch_size)
    return SFTConfig(
        **device_args(
            output_dir=str(checkpoint_dir(out_dir)),
            completion_only_loss=True,
            train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
            per_device_train_batch_size=settings.batch_size,
            num_train_epochs=settings.epochs,
            **trl_values,
            # Padding-free batches are not truncated by TRL (rows over max_length were dropped above).
            max_length=None if settings.padding_free else settings.max_length,
        )
    )


def build_sft_trainer(
    sft_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: SFTSettings,
    checkpoint: Path | None = None,
    callbacks: list[Any] | None = None,
):
    """The configured ``SFTTrainer`` (data formatted, model and tokenizer built), not yet trained.

    Exposed so benchmarks and tests exercise exactly the trainer ``cellduality sft`` runs.
    """
    from trl import SFTTrainer

    sft_path = Path(sft_dir)
    data = load_sft_data(sft_path)
    model, tokenizer = _model_and_tokenizer(settings, sft_path, data, checkpoint)
    train = _as_training_rows(data["train"], tokenizer)
    eval_data = None
    if "test" in data and len(data["test"]) and settings.eval_steps:
        test = data["test"].select(range(min(settings.max_eval_rows, len(data["test"]))))
        eval_data = _as_training_rows(test, tokenizer)
    n_rows = len(train)
    train = _drop_long_rows(train, tokenizer, settings.max_length)
    eval_data = _drop_long_rows(eval_data, tokenizer, settings.max_length) if eval_data is not None else None
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(settings, Path(out_dir), eval_data is not None),
        train_dataset=train,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        peft_config=lora_config(settings.lora_overrides()) if settings.lora else None,
        callbacks=callbacks,
    )
    trainer.rows_over_max_length = n_rows - len(train)
    return trainer


def run_sft(
    sft_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: SFTSettings | None = None,
    resume: bool = False,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``settings.model`` on ``sft_dir`` and leave a CellDuality model in ``out_dir``.

    Returns a summary (steps, first/final loss, tokens seen, parameters, wall time) that is also
    written to ``OUT_DIR/sft_summary.json``. ``callbacks`` are extra ``TrainerCallback``s.
    """
    from cellduality.models.loading import save_cellduality_model

    settings = settings or SFTSettings()
    sft_path, out = Path(sft_dir), Path(out_dir)
    train_rows = load_sft_data(sft_path)["train"]  # fail on a bad input folder before touching OUT_DIR
    # rows per direction/task: what inference reads to know the model learnt the answer-only form
    directions = dict(Counter(f"{d}/{t}" for d, t in zip(train_rows["direction"], train_rows["task"], strict=True)))
    fingerprint = run_fingerprint({"sft_data": sft_path}, settings.model_dump(mode="json"))
    checkpoint = prepare_output_dir(out, resume, inputs=(sft_path,), fingerprint=fingerprint)
    trainer = build_sft_trainer(sft_path, out, settings, checkpoint, callbacks)
    if trainer.accelerator.is_main_process:  # one writer; the other ranks skipped the output policy
        record_fingerprint(out, fingerprint, "sft")
    tokenizer = trainer.processing_class
    use_rich_progress(trainer)
    started = time.perf_counter()
    start_step = resumed_steps(checkpoint)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - started

    history = trainer.state.log_history
    losses = [row["loss"] for row in history if "loss" in row]
    trained = trainer.accelerator.unwrap_model(trainer.model)
    summary = {
        "model": settings.model,
        "lora": settings.lora,
        "steps": trainer.state.global_step,
        "steps_this_run": trainer.state.global_step - start_step,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "train_rows": len(trainer.train_dataset),
        "rows_over_max_length": getattr(trainer, "rows_over_max_length", 0),
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "train_loss": result.training_loss,
        "tokens_seen": trainer._total_train_tokens,
        "parameters": count_parameters(trained),
        "trainable_parameters": count_parameters(trained, trainable_only=True),
        "wall_seconds": round(wall, 2),
        "directions": directions,
    }
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_log_history(history, out)
        plot_loss_curve(history, out / LOSS_PLOT, title=f"SFT loss ({settings.model})")
        info = {
            "stage": "sft",
            "base_model": settings.model,
            "sft_data": str(sft_path.resolve()),
            "settings": settings.model_dump(),
            "summary": summary,
        }
        save_cellduality_model(trained, tokenizer, out, info, lineage_dir=sft_path)
        tmp = out / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out / SUMMARY_FILE)
    trainer.accelerator.wait_for_everyone()
    return summary
