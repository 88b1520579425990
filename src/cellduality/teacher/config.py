"""Settings of ``cellduality teach`` (validated YAML; CLI flags override file values)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cellduality.config import StrictModel

DEFAULT_TEMPERATURE = {"offline": 0.5, "openai": 0.8}

PRIMAL_DIRECT_FORM = "primal"
"""``direct_primal_prompt`` form: the primal prompt + 'Answer directly, without reasoning.'"""
ANSWER_ONLY_FORM = "answer_only"
"""``direct_primal_prompt`` form: the task's own answer-only prompt (candidates first)."""


class TeachConfig(StrictModel):
    """Every knob of the teacher and of filtering. Unknown keys are errors."""

    teacher: Literal["offline", "openai"] = "offline"
    n: int = Field(4, ge=1, le=64, description="candidates per prompt")
    temperature: float | None = Field(None, ge=0, le=2, description="default: 0.5 offline, 0.8 openai")
    threshold: float = Field(0.4, ge=0, le=1, description="RWJS a generated cell needs (generative tasks)")
    task_thresholds: dict[str, float] = Field(default_factory=dict, description="per-task RWJS thresholds")
    dual_threshold: float = Field(0.9, ge=0, le=1, description="1 - distance a dual trace's answer needs")
    keep_per_prompt: int = Field(1, ge=1, description="accepted candidates kept per prompt (best first)")
    include_dual: bool = True
    direct_dual: bool = Field(True, description="also train each dual prompt with a direct answer (empty "
                              "reasoning): the form the likelihood duality reward scores")
    direct_primal: bool = Field(True, description="also train each kept primal row of a classification task "
                                "with a direct answer (no reasoning): the form fast annotation ranks labels by")
    direct_primal_prompt: Literal["primal", "answer_only", "both"] = Field(
        "primal", description="prompt of those rows: 'primal' (the primal prompt + 'Answer directly, without "
        "reasoning.'), 'answer_only' (the task's own answer-only prompt, candidates first, shared by all cells: "
        "twice the cells/s in fast annotation, but on the quickstart model annotation accuracy fell ~10 points "
        "and generation kNN@10 ~18) or 'both' (a row of each; fast annotation asks the answer-only way); "
        "3-seed figures in docs/performance.md")
    max_examples: int | None = Field(None, ge=1, description="primal prompts per task and split")
    max_test_examples: int | None = Field(None, ge=0, description="per task in the test split (default: max_examples)")
    seed: int = 0
    batch_size: int = Field(64, ge=1, description="prompts per teacher call and per progress checkpoint")
    # offline teacher
    noise: float = Field(0.05, ge=0, description="offline: scale of the ranking noise in generated cells")
    # OpenAI-compatible teacher
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff: float = Field(1.0, ge=0)
    max_tokens: int = Field(512, ge=16)
    price_prompt_per_million: float = Field(0.0, ge=0)
    price_completion_per_million: float = Field(0.0, ge=0)
    cache_path: str | None = Field(None, description="default: <cache dir>/teacher/responses.sqlite")

    @property
    def direct_primal_forms(self) -> tuple[str, ...]:
        """The forms ``direct_primal_prompt`` asks for, each one row per kept primal row."""
        both = (PRIMAL_DIRECT_FORM, ANSWER_ONLY_FORM)
        return both if self.direct_primal_prompt == "both" else (self.direct_primal_prompt,)

    @property
    def effective_temperature(self) -> float:
        return DEFAULT_TEMPERATURE[self.teacher] if self.temperature is None else self.temperature

    def threshold_for(self, task: str) -> float:
        return float(self.task_thresholds.get(task, self.threshold))
