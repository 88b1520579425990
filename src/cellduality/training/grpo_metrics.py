"""Where a GRPO step's time goes, the reward history, and the paper's Figure 2 curves.

A step (one optimiser update) is split into: rollout generation (TRL's ``_generate``), reward
(our reward callables; the dual generations inside it are reported separately), the rest of
scoring (reference / old-policy log-probs, tokenisation), forward/backward (the loss and its
gradient) and the optimiser step. ``reward_time_fraction`` is reward time / step wall time.

Per-step records are written after every step (``cellduality_steps.json`` beside the
checkpoints) and cut back to the resumed checkpoint on ``--resume``, so a run killed and resumed
reports every step exactly once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

STEPS_FILE = "cellduality_steps.json"
PHASES = ("rollout_generation", "reward", "dual_generation", "scoring_other", "forward_backward", "optimizer")


class StepClock:
    """Accumulates seconds per phase for the step in progress."""

    def __init__(self) -> None:
        self.current: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def add(self, phase: str, seconds: float) -> None:
        self.current[phase] = self.current.get(phase, 0.0) + seconds

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped so that its wall time is added to ``phase``."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - start)

        return wrapper

    def take(self) -> dict[str, float]:
        out, self.current = self.current, dict.fromkeys(PHASES, 0.0)
        return out


class TimedReward:
    """A reward callable timed into ``clock`` (a plain object, never an ``nn.Module``).

    Keeps the inner reward's ``__name__`` so TRL logs it under the same name, and adds the dual
    generation seconds the reward reports in ``last_stats``.
    """

    def __init__(self, reward: Any, clock: StepClock) -> None:
        self.reward = reward
        self.clock = clock
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> list[float]:
        start = time.perf_counter()
        try:
            return self.reward(*args, **kwargs)
        finally:
            self.clock.add("reward", time.perf_counter() - start)
            stats = getattr(self.reward, "last_stats", None) or {}
            # the dual pass: generated duals (paper reward) or teacher-forced scoring (likelihood)
            self.clock.add("dual_generation", float(stats.get("generate_seconds", 0.0))
                           + float(stats.get("score_seconds", 0.0)))


def make_step_callback(clock: StepClock, path: Path) -> Any:
    """A ``TrainerCallback`` recording one timing record per optimiser step into ``path``.

    The file is rewritten (atomically) after every step; :meth:`resume_from` keeps the records up
    to the checkpoint a run resumes from, so steps redone after a crash are counted once.
    """
    from transformers import TrainerCallback

    class StepTimingCallback(TrainerCallback):
        def __init__(self) -> None:
            self.records: list[dict[str, float]] = []
            self._step_start: float | None = None
            self._opt_start: float | None = None

        def resume_from(self, step: int) -> None:
            old = json.loads(path.read_text()) if path.is_file() else []
            self.records = [r for r in old if r["step"] <= step]

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            clock.take()  # drop time spent before this step (e.g. loading a checkpoint)
            self._step_start = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
            self._opt_start = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
            if self._opt_start is not None:
                clock.add("optimizer", time.perf_counter() - self._opt_start)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self._step_start is None:
                return
            record = {"step": state.global_step, "wall": time.perf_counter() - self._step_start, **clock.take()}
            self.records = [r for r in self.records if r["step"] < state.global_step] + [record]
            if state.is_world_process_zero:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(self.records))
                tmp.replace(path)

    return StepTimingCallback()


def timing_summary(records: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Totals, per-step means and shares of wall time; ``reward_time_fraction`` among them.

    ``forward_backward`` in the records is the whole micro-step time minus input preparation
    (which ends where ``compute_loss`` starts); ``scoring_other`` is input preparation minus
    rollout generation and reward.
    """
    wall = sum(r["wall"] for r in records)
    totals = {phase: sum(r.get(phase, 0.0) for r in records) for phase in PHASES}
    accounted = sum(v for k, v in totals.items() if k != "dual_generation")
    totals["other"] = max(0.0, wall - accounted)
    n = len(records)
    return {
        "steps_timed": n,
        "wall_seconds": wall,
        "seconds_per_step": wall / n if n else 0.0,
        "seconds": totals,
        "fraction": {k: (v / wall if wall else 0.0) for k, v in totals.items()},
        "reward_time_fraction": totals["reward"] / wall if wall else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Reward history and Figure 2
# --------------------------------------------------------------------------------------------


def reward_history(log_history: Sequence[Mapping[str, Any]], reward_name: str) -> list[dict[str, Any]]:
    """One entry per logged step: mean reward, per-task means, parse failures, lengths, KL."""
    prefix = f"{reward_name}/"
    keep = ("reward", "reward_std", "kl", "entropy", "loss", "completions/mean_length",
            "completions/clipped_ratio", "frac_reward_zero_std")
    history = []
    for entry in log_history:
        if "reward" not in entry or "step" not in entry:
            continue
        row: dict[str, Any] = {"step": int(entry["step"])}
        row.update({k: entry[k] for k in keep if k in entry})
        tasks = {k[len(prefix):-len("/mean")]: v for k, v in entry.items()
                 if k.startswith(prefix) and k.endswith("/mean") and v is not None}
        row["tasks"] = tasks
        for stat in ("primal_malformed_rate", "dual_parse_failure_rate"):
            if prefix + stat in entry:
                row[stat] = entry[prefix + stat]
        history.append(row)
    return history


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_reward_curves(
    history: Sequence[Mapping[str, Any]], task_kinds: Mapping[str, str], path: Path, *, window: int = 10,
    title: str = "",
) -> Path | None:
    """Figure 2 of the paper: moving-average reward per task, (a) generative tasks (categorical
    reward), (b) classification tasks (continuous RWJS reward). Returns the PNG path, or ``None``
    when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("generative", "(a) Categorical reward (generative tasks)"),
              ("classification", "(b) Continuous reward (classification tasks)")]
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in history:
        for task, value in row.get("tasks", {}).items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            steps, values = series.setdefault(task, ([], []))
            steps.append(row["step"])
            values.append(float(value))
    used = [(kind, label) for kind, label in panels if any(task_kinds.get(t) == kind for t in series)]
    if not used:
        return None
    fig, axes = plt.subplots(1, len(used), figsize=(5.5 * len(used), 3.8), squeeze=False)
    for ax, (kind, label) in zip(axes[0], used, strict=True):
        for task, (steps, values) in sorted(series.items()):
            if task_kinds.get(task) == kind:
                ax.plot(steps, moving_average(values, window), label=task)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"reward (moving average, window {window})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
