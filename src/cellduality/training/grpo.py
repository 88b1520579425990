"""Stage 2: GRPO from the SFT model, rewarded by task duality or by the ground-truth oracle.

Paper §3.4: for each unlabeled prompt the policy samples a group of G completions; each is scored
by the **duality reward** (the live policy answers the dual task on its own primal answer and the
reconstruction of ``x_u`` is scored, :class:`cellduality.rewards.DualityReward`), or -- for the
supervised-RLVR baseline -- by the **ground-truth reward** (:class:`GroundTruthReward`). The
optimisation itself is TRL's ``GRPOTrainer`` (group-normalised advantages, clipped surrogate with
``epsilon``, KL to the SFT reference with ``beta``); nothing here re-implements RL.

Annotation-free by construction: duality mode reads ``TASKS_DIR/rl`` and refuses any dataset that
carries a ground-truth column; the oracle reads ``TASKS_DIR/rl_oracle``. Both modes share every
other line of code, so the comparison is fair.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from cellduality.errors import CellDualityError, ConfigError
from cellduality.rewards import DualRewardMode
from cellduality.tasks.base import gene_vocabulary
from cellduality.training.common import CHECKPOINTS
from cellduality.training.grpo_metrics import (
    STEPS_FILE,
    StepClock,
    TimedReward,
    make_step_callback,
    plot_reward_curves,
    reward_history,
    timing_summary,
)
from cellduality.training.grpo_policy import policy_generate_fn, policy_score_fn
from cellduality.training.trl_settings import TRLSettings

RewardMode = Literal["duality", "ground-truth"]
GROUND_TRUTH_COLUMNS = ("target", "answer")
STAGES = {"duality": "grpo-duality", "ground-truth": "grpo-oracle"}
FOLDERS = {"duality": "rl", "ground-truth": "rl_oracle"}
METRICS_FILE = "metrics.json"
CURVES_FILE = "reward_curves.png"
REPORT_BACKENDS = ("none", "tensorboard", "wandb", "mlflow", "trackio")


class GRPOSettings(TRLSettings):
    """Everything that defines a GRPO run (YAML via ``--config``; ``--set KEY=VALUE`` and flags override).

    Any field of ``trl.GRPOConfig`` may be set too (``mask_truncated_completions: true``, ``top_k``,
    ``repetition_penalty``, ``generation_kwargs``, ``reward_weights``, ...) and reaches the trainer
    unchanged (:class:`~cellduality.training.trl_settings.TRLSettings`). The fields declared here
    are CellDuality's own settings and the TRL fields whose default CellDuality chooses (or
    resolves): this class body is the one place where the project's defaults live.

    Batch geometry: one optimiser step consumes ``prompts_per_step`` prompts x ``num_generations``
    completions, split over processes and micro-batches of ``per_device_train_batch_size``
    completions (default: everything in one micro-batch per process). Gradient accumulation is
    derived, so the same file runs on 1 CPU or 8 GPUs.
    """

    trl_config: ClassVar[str] = "GRPOConfig"
    derived: ClassVar[dict[str, str]] = dict.fromkeys(
        ("gradient_accumulation_steps", "steps_per_generation", "generation_batch_size"),
        "prompts_per_step, num_generations and per_device_train_batch_size",
    ) | {"remove_unused_columns": "the reward's need for the task columns (always false)"}

    reward: RewardMode = Field("duality", description="duality (self-supervised) or ground-truth (the oracle)")
    # GRPO (paper eq. 3-4)
    num_generations: int = Field(8, ge=2, description="G, completions per prompt")
    prompts_per_step: int = Field(2, ge=1, description="distinct prompts per optimiser step")
    per_device_train_batch_size: int | None = Field(None, ge=1)
    num_iterations: int = Field(1, ge=1, description="policy updates per generation batch (mu)")
    learning_rate: float = Field(
        5e-5, gt=0, description="5e-5 moves a `mini`/`small` policy (KL 0.02-0.03 in 16-30 steps); TRL's 1e-6 "
        "and our earlier 1e-5 left it where SFT put it (docs/results.md)")
    lr_scheduler_type: str = "constant"
    epsilon: float = Field(0.2, gt=0, description="clip range epsilon_c of the surrogate")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the SFT reference")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "none", description="none: advantages are reward - group mean. The likelihood reward's spread within a "
        "group is small, and dividing by it blows the dual's noise up to unit-size advantages; chosen over "
        "'group' (paper eq. 3) on validation, docs/results.md")
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_steps: int = Field(200, ge=1)
    seed: int = 0
    # data
    task_weights: dict[str, float] = Field(default_factory=dict, description="task -> sampling weight (1 if absent)")
    train_split: str = Field("train", description="split of the rl / rl_oracle set to train on")
    # the dual pass of the duality reward
    dual_reward: DualRewardMode = Field(
        "likelihood", description="likelihood: the dual's teacher-forced probability of x_u against the "
        "candidates (one forward pass); paper: a generated dual scored by RWJS / exact recovery (paper §3.4.1)")
    likelihood_temperature: float = Field(1.0, gt=0, description="divides dual log-likelihoods before the softmax")
    likelihood_calibration: bool = Field(
        False, description="likelihood reward: divide the dual's posterior by its running mean posterior of "
        "each candidate over the cells scored so far (removes a label bias of the dual; no label read)")
    dual_max_new_tokens: int = Field(256, ge=1, description="paper reward: length of the generated dual")
    dual_temperature: float = Field(0.0, ge=0, description="paper reward: 0 = greedy dual decoding")
    model_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the policy's weights; on a GPU TRL's bf16 mixed precision computes on "
        "top of them. bf16 weights round an update below ~0.4 % of a weight back to the same value: at RL "
        "learning rates the policy then never moves")
    # a label-free second reward: the share of the reasoning's claims true of the prompt (issue #13)
    faithfulness_weight: float = Field(0.0, ge=0, description="weight of the faithfulness reward; 0 = off")
    # rollouts through vLLM (GPU only)
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    # precision / memory
    bf16: bool | None = Field(None, description="None: bf16 when a GPU supports it")
    gradient_checkpointing: bool = False
    # bookkeeping
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    report_to: list[str] = Field(default_factory=lambda: ["none"])
    moving_average_window: int = Field(10, ge=1, description="window of the reward curves (reward_curves.png)")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(REPORT_BACKENDS))
        if unknown:
            raise ValueError(f"unknown backend {unknown}; choose from {list(REPORT_BACKENDS)}")
        return value

    @field_validator("task_weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()) or (value and sum(value.values()) <= 0):
            raise ValueError("task weights must be >= 0 and not all zero")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GRPOSettings:
        if self.per_device_train_batch_size and self.completions_per_step % self.per_device_train_batch_size:
            raise ValueError(f"per_device_train_batch_size ({self.per_device_train_batch_size}) must divide "
                             f"prompts_per_step x num_generations ({self.completions_per_step})")
        return self

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def resolve_rl_data(tasks_dir: str | Path, mode: RewardMode) -> tuple[Path, Path]:
    """``(tasks_dir, dataset_dir)`` for ``mode``.

    ``tasks_dir`` is a tasks folder (with ``tasks.json``; the mode picks ``rl`` or ``rl_oracle``
    inside it) or one of those dataset folders directly (its parent holds ``tasks.json``).
    """
    path = Path(tasks_dir)
    if (path / "tasks.json").is_file():
        return path, path / FOLDERS[mode]
    if (path / "dataset_dict.json").is_file() and (path.parent / "tasks.json").is_file():
        return path.parent, path
    raise CellDualityError(f"{path} is not a tasks folder; pass the OUT_DIR of `cellduality tasks build`.")


def load_rl_dataset(dataset_dir: Path, mode: RewardMode, split: str = "train") -> Any:
    """The RL prompts for ``mode``; duality mode refuses a set carrying ground-truth columns."""
    from datasets import load_from_disk

    if not (dataset_dir / "dataset_dict.json").is_file():
        raise CellDualityError(f"{dataset_dir} is missing; rebuild the tasks folder with `cellduality tasks build`.")
    data = load_from_disk(str(dataset_dir))
    if split not in data:
        raise ConfigError(f"{dataset_dir} has no '{split}' split (has {sorted(data)}); set train_split.")
    dataset = data[split]
    leaked = [c for c in GROUND_TRUTH_COLUMNS if c in dataset.column_names]
    if mode == "duality" and leaked:
        raise CellDualityError(
            f"{dataset_dir} carries ground-truth column(s) {leaked}: the duality reward trains on unlabeled "
            "prompts only; pass the tasks folder (its 'rl' set is used) or use --reward ground-truth."
        )
    if mode == "ground-truth" and "target" not in dataset.column_names:
        raise CellDualityError(f"{dataset_dir} has no 'target' column; the oracle needs the 'rl_oracle' set.")
    missing = {"prompt", "task", "known", "unknown", "seed"} - set(dataset.column_names)
    if missing:
        raise CellDualityError(f"{dataset_dir} lacks columns {sorted(missing)}; rebuild it with `cellduality tasks build`.")
    if len(dataset) == 0:
        raise CellDualityError(f"{dataset_dir} has no '{split}' rows; build the tasks folder from more cells.")
    return dataset


def mix_tasks(dataset: Any, weights: dict[str, float], seed: int) -> Any:
    """Re-weight the task mixture of ``dataset`` (same size; tasks sampled by weight, seeded).

    Tasks without a weight count 1; weighted tasks absent from this data are ignored (one config
    serves several datasets), but a name that is no task at all is an error.

    Uses the tasks builder's own mixing rule (:func:`cellduality.tasks.builders.mixture_counts`).
    """
    import numpy as np

    from cellduality.tasks.builders import mixture_counts

    if not weights:
        return dataset
    from cellduality.tasks import TASKS

    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ConfigError(f"task_weights names unknown tasks {unknown}; choose from {sorted(TASKS)}.")
    names = dataset["task"]
    present = sorted(set(names))
    weights = {t: w for t, w in weights.items() if t in present}  # a shared config may name absent tasks
    if not weights:
        return dataset
    rows_of = {t: [i for i, n in enumerate(names) if n == t] for t in present}
    counts = mixture_counts({t: len(r) for t, r in rows_of.items()}, weights)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for task in present:
        rows, want = rows_of[task], counts[task]
        if want:
            full, rest = divmod(want, len(rows))
            chosen += rows * full + [rows[i] for i in rng.choice(len(rows), rest, replace=False)]
    return dataset.select([chosen[i] for i in rng.permutation(len(chosen))])


# --------------------------------------------------------------------------------------------
# TRL configuration
# --------------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes of this run (``accelerate launch`` sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_grpo_config(settings: GRPOSettings, output_dir: str | Path, *, n_processes: int | None = None,
                      target: Literal["auto", "cpu", "gpu"] = "auto") -> Any:
    """Resolve ``settings`` into TRL's ``GRPOConfig`` for ``n_processes`` processes.

    ``target="cpu"`` (``auto`` without CUDA) forces the CPU-safe arguments (``use_cpu``, no bf16,
    no gradient checkpointing: with bf16 on a CPU a step is ~17x slower). ``target="gpu"`` resolves
    as on a GPU (bf16 unless ``bf16: false``); without CUDA here that is only for validation, so
    ``use_cpu`` is added to get past transformers' hardware check -- never for training.
    """
    import torch
    from trl import GRPOConfig

    n = n_processes or world_size()
    per_step = settings.completions_per_step
    per_device = settings.per_device_train_batch_size or per_step // n
    if per_device < 1 or per_step % (per_device * n):
        raise ConfigError(
            f"prompts_per_step x num_generations = {per_step} completions cannot be split over {n} processes "
            f"x {per_device} per device; make it a multiple of {n} x per_device_train_batch_size."
        )
    from cellduality.training.common import device_args

    cuda = torch.cuda.is_available()
    if target == "auto":
        target = "gpu" if cuda else "cpu"
    if target == "gpu" and not cuda:
        hardware = device_args(use_cpu=True, bf16=True, fp16=False, dataloader_pin_memory=True)
    else:
        hardware = device_args()
    if target == "gpu":
        hardware["gradient_checkpointing"] = settings.gradient_checkpointing
        if settings.bf16 is not None:
            hardware.update(bf16=settings.bf16, fp16=cuda and not settings.bf16 and hardware["fp16"])
    # every TRL field of the settings, except those resolved above or derived here
    trl_values = {k: v for k, v in settings.trl_kwargs().items()
                  if k not in ("per_device_train_batch_size", "bf16", "gradient_checkpointing")}
    n_rewards = 1 + (settings.faithfulness_weight > 0)
    weights = trl_values.get("reward_weights")
    if weights is not None and len(weights) != n_rewards:
        raise ConfigError(f"reward_weights has {len(weights)} value(s) but the run has {n_rewards} reward(s) "
                          "(duality or ground-truth, then faithfulness when faithfulness_weight > 0).")
    if weights is None and n_rewards == 2:
        trl_values["reward_weights"] = [1.0, settings.faithfulness_weight]
    return GRPOConfig(
        output_dir=str(output_dir),
        **{**hardware, "data_seed": settings.seed, **trl_values},
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=per_step // (per_device * n),
        remove_unused_columns=False,  # the reward needs task/known/unknown/seed (and target)
    )


def _check_backends(report_to: list[str]) -> None:
    from transformers.integrations import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    for name in report_to:
        if name in available and not available[name]():
            raise ConfigError(f"report_to names '{name}' but it is not installed; pip install {name} or drop it.")


def _model_info(sft_model: str | Path) -> dict[str, Any]:
    """What is known about the SFT model without loading weights (one-line error if unusable)."""
    from cellduality.models import INFO_FILE, read_model_info

    path = Path(sft_model)
    if (path / INFO_FILE).is_file():
        info = read_model_info(path)
        return {"path": str(path), "stage": info.get("stage"), "base_model": info.get("base_model")}
    if (path / "config.json").is_file():
        return {"path": str(path), "stage": None, "base_model": None}
    raise CellDualityError(f"--sft-model {path} is not a model folder; pass the OUT_DIR of `cellduality sft`.")


def _device_target(settings: GRPOSettings) -> str:
    import torch

    return "gpu" if torch.cuda.is_available() or settings.use_vllm or settings.bf16 else "cpu"


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _prepare(tasks_dir: str | Path, settings: GRPOSettings) -> tuple[Path, dict[str, Any], Any]:
    """Tasks folder, tasks, and the (re-weighted, prompt-formatted later) training prompts."""
    from cellduality.tasks import load_tasks

    tasks_dir, dataset_dir = resolve_rl_data(tasks_dir, settings.reward)
    tasks = load_tasks(tasks_dir)
    dataset = load_rl_dataset(dataset_dir, settings.reward, settings.train_split)
    unknown = sorted(set(dataset.unique("task")) - set(tasks))
    if unknown:
        raise CellDualityError(f"{dataset_dir} has rows of tasks {unknown} missing from {tasks_dir / 'tasks.json'}.")
    return tasks_dir, tasks, mix_tasks(dataset, settings.task_weights, settings.seed)


def dry_run(tasks_dir: str | Path, out_dir: str | Path, sft_model: str | Path | None, settings: GRPOSettings,
            *, n_processes: int | None = None) -> dict[str, Any]:
    """Everything up to loading weights: data, tasks, the resolved ``GRPOConfig``, the model folder.

    This is how the multi-GPU configs are validated on a machine without GPUs.
    """
    tasks_dir, tasks, dataset = _prepare(tasks_dir, settings)
    n = n_processes or world_size()
    config = build_grpo_config(settings, Path(out_dir) / CHECKPOINTS, n_processes=n,
                               target=_device_target(settings))
    model_info: dict[str, Any] | None = None
    if sft_model is not None:
        model_info = _model_info(sft_model)
    counts: dict[str, int] = {}
    for name in dataset["task"]:
        counts[name] = counts.get(name, 0) + 1
    return {
        "dry_run": True,
        "reward": settings.reward,
        "tasks_dir": str(tasks_dir),
        "dataset": FOLDERS[settings.reward],
        "prompts": len(dataset),
        "prompts_per_task": counts,
        "tasks": {name: task.kind for name, task in tasks.items()},
        "processes": n,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        # what one optimiser step generates across all processes (GRPOConfig itself only sees this
        # machine's process count; under `accelerate launch` both agree)
        "generation_batch_size": config.per_device_train_batch_size * n * config.gradient_accumulation_steps,
        "num_generations": config.num_generations,
        "bf16": config.bf16,
        "use_vllm": config.use_vllm,
        "vllm_mode": config.vllm_mode if config.use_vllm else None,
        "sft_model": model_info,
        "settings": settings.model_dump(),
    }


def _trainer_class() -> type:
    """TRL's ``GRPOTrainer`` with timing hooks; behaviour unchanged (each override measures and calls ``super()``).

    The step breakdown comes from public mechanisms where TRL has one: step wall time and the
    optimiser from callbacks, reward and dual pass from our own reward callable, and the split of
    a micro-step into input preparation and forward/backward from ``training_step`` and
    ``compute_loss`` (Trainer's documented extension points): preparation ends where
    ``compute_loss`` begins. Rollout generation has no public hook in TRL 1.16 (its
    ``profiling_context`` only reports to wandb/mlflow/trackio, and ``rollout_func`` replaces
    generation instead of observing it), so the one private override left is ``_generate``; if a
    TRL upgrade renames it, ``rollout_generation`` reads 0 and the time shows under
    ``scoring_other`` (``tests/test_grpo.py`` asserts it is > 0 for the pinned version).
    """
    import time

    from trl import GRPOTrainer

    class CellDualityGRPOTrainer(GRPOTrainer):
        clock: StepClock
        _loss_started: float | None = None

        def _generate(self, prompts):  # noqa: ANN001, ANN202
            start = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                self.clock.add("rollout_generation", time.perf_counter() - start)

        def compute_loss(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if self._loss_started is None:
                self._loss_started = time.perf_counter()
            return super().compute_loss(*args, **kwargs)

        def training_step(self, model, inputs, num_items_in_batch):  # noqa: ANN001, ANN202
            before = self.clock.current["rollout_generation"] + self.clock.current["reward"]
            self._loss_started, start = None, time.perf_counter()
            out = super().training_step(model, inputs, num_items_in_batch)
            end = time.perf_counter()
            prepared = (self._loss_started or end) - start
            inner = self.clock.current["rollout_generation"] + self.clock.current["reward"] - before
            self.clock.add("scoring_other", max(0.0, prepared - inner))
            self.clock.add("forward_backward", end - start - prepared)
            return out

    return CellDualityGRPOTrainer


def run_grpo(
    tasks_dir: str | Path,
    out_dir: str | Path,
    sft_model: str | Path,
    settings: GRPOSettings,
    resume: bool = False,
    *,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train ``sft_model`` with GRPO on the RL prompts of ``tasks_dir``; return the metrics.

    Leaves in ``out_dir``: the final model (HF format + ``cellduality.json`` with stage
    ``grpo-duality`` / ``grpo-oracle`` + lineage files), ``metrics.json`` (reward history, step-time
    breakdown, ``reward_time_fraction``), ``reward_curves.png`` (paper Figure 2) and
    ``checkpoints/`` (for ``resume``). ``metrics.json`` is written last: it marks a finished run.
    """
    import torch

    from cellduality.models import format_prompt, load_model, save_cellduality_model
    from cellduality.outputs import record_fingerprint, run_fingerprint
    from cellduality.rewards import DualityReward, DualLikelihoodReward, GroundTruthReward
    from cellduality.training.common import (
        plot_loss_curve,
        prepare_output_dir,
        resumed_steps,
        save_log_history,
        use_rich_progress,
    )

    out = Path(out_dir)
    checkpoints = out / CHECKPOINTS
    metrics_path = out / METRICS_FILE
    # the output policy first: OUT must be new or this same GRPO run (never e.g. the SFT model folder)
    fingerprint = run_fingerprint({"rl_data": tasks_dir, "sft_model": sft_model}, settings.model_dump(mode="json"))
    last = prepare_output_dir(out, resume, "cellduality grpo", inputs=(tasks_dir, sft_model), fingerprint=fingerprint)
    if metrics_path.is_file():  # a finished run: --resume has nothing left to do
        return json.loads(metrics_path.read_text())
    if settings.use_vllm and not torch.cuda.is_available():
        raise ConfigError("use_vllm needs a GPU (vLLM does not run on CPU); set use_vllm: false here.")
    _check_backends(settings.report_to)

    tasks_dir, tasks, dataset = _prepare(tasks_dir, settings)
    model_info = _model_info(sft_model)
    model, tokenizer = load_model(sft_model, dtype=settings.model_dtype)
    dataset = dataset.map(lambda row: {"prompt": format_prompt(tokenizer, row["prompt"])})
    config = build_grpo_config(settings, checkpoints)

    clock = StepClock()
    if settings.reward == "ground-truth":
        reward = GroundTruthReward(tasks)
    elif settings.dual_reward == "likelihood":
        reward = DualLikelihoodReward(tasks, temperature=settings.likelihood_temperature,
                                      calibrate=settings.likelihood_calibration)
    else:
        reward = DualityReward(tasks)
    from cellduality.faithfulness import faithfulness_rewards

    extra_rewards = faithfulness_rewards(tasks, tasks_dir, settings.faithfulness_weight)  # [] when off
    step_callback = make_step_callback(clock, checkpoints / STEPS_FILE)
    trainer = _trainer_class()(
        model=model,
        reward_funcs=[TimedReward(reward, clock), *extra_rewards],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[step_callback, *(callbacks or [])],
    )
    trainer.clock = clock
    if trainer.accelerator.is_main_process:  # one writer; the other ranks skipped the output policy
        record_fingerprint(out, fingerprint, "grpo")
    use_rich_progress(trainer)
    if isinstance(reward, DualLikelihoodReward):
        reward.score = policy_score_fn(trainer, tokenizer)
    if isinstance(reward, DualityReward):
        # The live policy answers the dual task: attached now that the trainer (and its wrapped,
        # possibly vLLM-served, policy) exists.
        reward.generate = policy_generate_fn(trainer, tokenizer, max_new_tokens=settings.dual_max_new_tokens,
                                             temperature=settings.dual_temperature, format_prompt=format_prompt,
                                             genes=gene_vocabulary(tasks))
    if last is not None:
        step_callback.resume_from(resumed_steps(last))
    trainer.train(resume_from_checkpoint=str(last) if last else None)

    stage = STAGES[settings.reward]
    metrics = _metrics(trainer, step_callback.records, settings, tasks, stage, model_info, tasks_dir)
    if trainer.accelerator.is_main_process:
        plot = plot_reward_curves(metrics["history"], {n: t.kind for n, t in tasks.items()},
                                  out / CURVES_FILE, window=settings.moving_average_window,
                                  title=f"GRPO ({settings.reward} reward)")
        metrics["curves"] = plot.name if plot else None
        save_log_history(trainer.state.log_history, out)
        plot_loss_curve(trainer.state.log_history, out / "kl_loss.png", keys=("loss", "kl"), title="GRPO loss and KL")
    trainer.accelerator.wait_for_everyone()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.accelerator.is_main_process:
        save_cellduality_model(policy, tokenizer, out, {
            "stage": stage, "base_model": model_info.get("base_model") or model_info["path"],
            "parent_model": model_info["path"], "reward": settings.reward,
            "grpo": settings.model_dump(), "global_step": trainer.state.global_step,
        }, lineage_dir=tasks_dir)
        tmp = metrics_path.with_name(METRICS_FILE + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=1, default=float))
        tmp.replace(metrics_path)
    return metrics


def _metrics(trainer: Any, records: list[dict[str, float]], settings: GRPOSettings, tasks: dict[str, Any],
             stage: str, model_info: dict[str, Any], tasks_dir: Path) -> dict[str, Any]:
    history = reward_history(trainer.state.log_history, "duality" if settings.reward == "duality" else "ground_truth")
    timing = timing_summary(records)
    return {
        "stage": stage,
        "reward": settings.reward,
        "sft_model": model_info["path"],
        "tasks_dir": str(tasks_dir),
        "task_kinds": {name: task.kind for name, task in tasks.items()},
        "global_step": trainer.state.global_step,
        "max_steps": settings.max_steps,
        "history": history,
        "timing": timing,
        "reward_time_fraction": timing["reward_time_fraction"],
        "steps": records,
        "log_history": trainer.state.log_history,
        "settings": settings.model_dump(),
    }
