"""Rewards: Rank-Weighted Jaccard Similarity, the duality reward and the ground-truth oracle.

The duality reward is Definition 3.1 of the paper turned into a number: run the primal answer of
the policy through the complementary dual task (answered by the *same* policy through
``generate``) and score how well the dual rebuilt ``x_u``. It never reads a label. The
ground-truth reward is the supervised-RLVR oracle used as a baseline: it reads ``target``.

Both are plain callables (not ``torch.nn.Module``: TRL would take a module for a reward model)
with TRL's reward signature ``(prompts, completions, **columns) -> list[float]``.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from cellduality.duality import DualQuery, GenerateFn, dual_pass

if TYPE_CHECKING:  # pragma: no cover  (runtime import would be circular: tasks use rwjs)
    from cellduality.tasks.base import Task

DualRewardMode = Literal["likelihood", "paper"]
"""How the duality reward reads the dual: :class:`DualLikelihoodReward` or :class:`DualityReward`."""
DUAL_REWARDS: tuple[str, ...] = get_args(DualRewardMode)
ParsedRow = tuple[int, "Task", Any, dict[str, Any]]


def _as_gene_list(genes: str | Iterable[str] | None) -> list[str]:
    if genes is None:
        return []
    if isinstance(genes, str):
        return genes.split()
    return [g for g in genes if isinstance(g, str)]


def rank_weights(genes: str | Iterable[str] | None, vocabulary: Iterable[str] | None = None) -> dict[str, float]:
    """``{gene: 1 / log2(1 + rank)}`` over the first occurrence of each gene (rank from 1).

    Genes outside ``vocabulary`` (when given) are dropped *before* ranking, so padding a list with
    non-genes neither helps nor shifts the ranks of the real genes.
    """
    vocab = None if vocabulary is None else set(vocabulary)
    weights: dict[str, float] = {}
    for gene in _as_gene_list(genes):
        if gene in weights or (vocab is not None and gene not in vocab):
            continue
        weights[gene] = 1.0 / math.log2(2 + len(weights))  # rank = len(weights) + 1
    return weights


def rwjs(
    reference: str | Iterable[str] | None,
    candidate: str | Iterable[str] | None,
    vocabulary: Iterable[str] | None = None,
) -> float:
    """Rank-Weighted Jaccard Similarity between two ranked gene lists, in ``[0, 1]``.

    The paper names this metric but its appendix is missing; this is our definition (DESIGN.md).
    Each gene ``g`` gets a weight ``w_X(g) = 1 / log2(1 + rank_X(g))`` in list ``X`` (rank from 1;
    weight 0 when absent; only the first occurrence counts; symbols outside ``vocabulary``, when
    given, are dropped). Then::

        RWJS(A, B) = sum_g min(w_A(g), w_B(g)) / sum_g max(w_A(g), w_B(g))

    It is 1 for identical lists, 0 for disjoint ones (and when either is empty), symmetric, and a
    gene displaced from its rank costs more near the top, where the weights change fastest.

    Worked example: ``A = [CD3D, CD3E, IL7R]``, ``B = [CD3E, CD3D, NKG7]``.
    Weights by rank: 1 -> 1.000, 2 -> 0.631, 3 -> 0.500.

    ====== ===== ===== ===== =====
    gene    w_A   w_B   min   max
    ====== ===== ===== ===== =====
    CD3D   1.000 0.631 0.631 1.000
    CD3E   0.631 1.000 0.631 1.000
    IL7R   0.500 0     0     0.500
    NKG7   0     0.500 0     0.500
    ====== ===== ===== ===== =====

    RWJS = 1.262 / 3.000 = 0.421 (plain Jaccard would say 2/4 = 0.5; swapping the top two genes
    and missing the third is penalised by rank).

    >>> round(rwjs(["CD3D", "CD3E", "IL7R"], ["CD3E", "CD3D", "NKG7"]), 3)
    0.421
    """
    w_ref = rank_weights(reference, vocabulary)
    w_cand = rank_weights(candidate, vocabulary)
    if not w_ref or not w_cand:
        return 0.0
    numerator = 0.0
    denominator = 0.0
    for gene in w_ref.keys() | w_cand.keys():
        a, b = w_ref.get(gene, 0.0), w_cand.get(gene, 0.0)
        numerator += min(a, b)
        denominator += max(a, b)
    return numerator / denominator if denominator > 0 else 0.0


# --------------------------------------------------------------------------------------------
# TRL reward callables
# --------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string or a conversational list of messages.

    For a conversation, the assistant messages are joined (TRL passes the generated turn as
    ``[{"role": "assistant", "content": ...}]``). Anything else becomes ``""``. Never raises.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        content = completion.get("content")
        return content if isinstance(content, str) else ""
    if isinstance(completion, Sequence):
        parts = []
        for message in completion:
            if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
                content = message.get("content")
                if isinstance(content, str):
                    parts.append(content)
        return "\n".join(parts)
    return ""


def _column(kwargs: Mapping[str, Any], name: str, n: int) -> list[Any]:
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column '{name}' has {len(values)} values for {n} completions")
    return values


def _json(value: Any) -> Any:
    """Dataset columns hold JSON strings (``tasks.base.dumps``); accept decoded values too."""
    if isinstance(value, str):
        return json.loads(value)
    return value


def _unknown(i: int, row: Mapping[str, Any]) -> Any:
    """``x_u`` of a row: the reward cannot be scored without it, so a missing one is a data bug."""
    if row["unknown"] is None:
        raise ValueError(f"row {i}: no 'unknown' value (x_u); use the rl dataset written by `cellduality tasks`")
    return _json(row["unknown"])


def _seed(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class _TaskReward:
    """Shared plumbing: task lookup, per-call statistics and TRL metric logging."""

    __name__ = "reward"

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        if not tasks:
            raise ValueError("a reward needs at least one task")
        self.tasks = dict(tasks)
        self.last_stats: dict[str, float] = {}

    def _task_names(self, kwargs: Mapping[str, Any], n: int) -> list[str | None]:
        names = _column(kwargs, "task", n)
        if all(name is None for name in names) and len(self.tasks) == 1:
            return [next(iter(self.tasks))] * n
        return names

    def _parsed(self, completions: Sequence[Any], kwargs: Mapping[str, Any],
                columns: Sequence[str] = ("known", "unknown", "seed")) -> tuple[list[str | None], list[ParsedRow], int]:
        """Task names, the well-formed rows ``(row, task, answer, {column: value})`` and the malformed count.

        Only the primal parser is forgiving (malformed text is counted, its reward stays 0); an
        unknown task name is a bug in the data and raises.
        """
        n = len(completions)
        names = self._task_names(kwargs, n)
        values = {c: _column(kwargs, c, n) for c in columns}
        parsed: list[ParsedRow] = []
        malformed = 0
        for i in range(n):
            task = self.tasks.get(names[i]) if names[i] is not None else None
            if task is None:
                raise ValueError(f"row {i}: task {names[i]!r} is not one of {sorted(self.tasks)}")
            answer = task.parse_primal(completion_text(completions[i]))
            if answer is None:
                malformed += 1
                continue
            parsed.append((i, task, answer, {c: v[i] for c, v in values.items()}))
        return names, parsed, malformed

    def _publish(self, stats: dict[str, float], kwargs: Mapping[str, Any]) -> None:
        self.last_stats = stats
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for key, value in stats.items():
                log_metric(f"{self.__name__}/{key}", float(value))


def _per_task_means(names: Sequence[str | None], rewards: Sequence[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for name, reward in zip(names, rewards, strict=True):
        groups[str(name)].append(reward)
    return {f"{name}/mean": sum(v) / len(v) for name, v in groups.items()}


class DualityReward(_TaskReward):
    """The self-supervised duality reward (paper §3.4.1): no label is ever read.

    For each completion: parse the primal answer ``y`` (malformed -> 0, and no dual is run), build
    the dual prompt from ``(y, x_k)`` with the task's own template, let the policy answer all dual
    prompts of the call in **one** ``generate`` batch, and score ``1 - d(x_u, x̂_u)``.

    ``generate`` may be attached after construction (``reward.generate = fn``): the GRPO trainer
    builds the policy-backed generator only once the trainer exists.
    Columns read: ``task``, ``known``, ``unknown``, ``seed`` (JSON strings as written by the RL
    builder). ``last_stats`` holds per-call figures, also sent to TRL's ``log_metric`` when given.
    """

    __name__ = "duality"

    def __init__(self, tasks: Mapping[str, Task], generate: GenerateFn | None = None) -> None:
        super().__init__(tasks)
        self.generate = generate

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        names, parsed, malformed = self._parsed(completions, kwargs)
        queries = [DualQuery(task, answer, _json(row["known"]) or {}, _seed(row["seed"]), _unknown(i, row))
                   for i, task, answer, row in parsed]
        if queries and self.generate is None:
            raise RuntimeError("DualityReward.generate is not set; attach the policy's generate function first")
        seconds = [0.0]

        def generate(dual_prompts: list[str]) -> list[str]:
            start = time.perf_counter()
            outputs = [completion_text(output) for output in self.generate(dual_prompts)]
            seconds[0] += time.perf_counter() - start
            return outputs

        results = dual_pass(queries, generate)
        rewards = [0.0] * n
        for (i, *_), result in zip(parsed, results, strict=True):
            rewards[i] = result.score
        dual_failures = sum(not r.parsed for r in results)
        stats = {
            "primal_malformed_rate": malformed / n if n else 0.0,
            "dual_parse_failure_rate": dual_failures / len(results) if results else 0.0,
            "generate_seconds": seconds[0],
            "n_dual": float(len(results)),
            **_per_task_means(names, rewards),
        }
        self._publish(stats, kwargs)
        return rewards


class DualLikelihoodReward(_TaskReward):
    """The duality reward read off the dual's *probability* of ``x_u``: one forward pass, no sampling.

    The paper's reward (:class:`DualityReward`) samples a dual answer and scores it with RWJS or
    0/1, which throws most of the dual's knowledge away: a small model's greedy inpainting
    ignores the label it is given, and a 0/1 label recovery saturates. Here the live policy
    scores, teacher-forced, the true ``x_u`` (the hidden genes; the cell type or perturbation
    of a generated cell) given the dual prompt, against every candidate
    (:meth:`Task.likelihood_queries`):

    * classification: ``P(y | x) ∝ p(c_hid | c_obs, y)`` over the candidate labels -- how much
      better the policy's label explains the hidden genes than the other labels do;
    * generative: ``p(x_u | y, x_k)`` normalised over the candidate ``x_u`` -- a soft version of
      the paper's exact-recovery reward.

    No label is read: ``x_u`` is part of the unlabelled input and the candidates are the task's
    label set. ``temperature`` divides the log-likelihoods before the softmax (> 1 softens an
    over-confident dual). ``score`` (``(prompts, targets) -> ContinuationScore``) is attached
    after construction by the GRPO trainer, like :attr:`DualityReward.generate`.

    ``calibrate`` removes the dual's *candidate prior*: a small dual prefers some labels whatever
    the cell (on pbmc68k the quickstart model's dual likes "CD19+ B", and uncalibrated duality
    GRPO turned T cells into B cells). GRPO's group normalisation cannot cancel such a bias, since
    it differs between the answers of one group. With ``calibrate`` the posterior is divided by
    the dual's average posterior of each candidate over the cells it has scored (a running mean,
    ``prior_decay`` per call, no label read) -- contextual calibration in the sense of Zhao et
    al. 2021 -- so a label is rewarded for explaining *this* cell better than it explains cells
    in general.
    """

    __name__ = "duality"

    def __init__(self, tasks: Mapping[str, Task], score: Callable[..., Any] | None = None,
                 temperature: float = 1.0, calibrate: bool = False, prior_decay: float = 0.9) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= prior_decay < 1.0:
            raise ValueError(f"prior_decay must be in [0, 1), got {prior_decay}")
        self.score = score
        self.temperature = temperature
        self.calibrate = calibrate
        self.prior_decay = prior_decay
        self._prior_sum: dict[tuple[str, str], float] = defaultdict(float)  # (task, key) -> decayed sum
        self._prior_n: dict[str, float] = defaultdict(float)  # task -> decayed number of scored inputs

    def candidate_prior(self, task: str, keys: Sequence[str]) -> list[float]:
        """The dual's running mean posterior of each candidate (uniform before anything is seen)."""
        n = self._prior_n.get(task, 0.0)
        if n <= 0:
            return [1.0 / len(keys)] * len(keys)
        return [self._prior_sum.get((task, k), 0.0) / n or 1.0 / len(keys) for k in keys]

    def _update_prior(self, units: Sequence[tuple[str, Sequence[str], Sequence[float]]]) -> None:
        """Fold this call's posteriors ``(task, keys, posterior)``, one per distinct input, into the prior."""
        for task in {task for task, _, _ in units}:
            for key in [k for t, k in self._prior_sum if t == task]:
                self._prior_sum[(task, key)] *= self.prior_decay
            self._prior_n[task] *= self.prior_decay
        for task, keys, posterior in units:
            self._prior_n[task] += 1
            for key, p in zip(keys, posterior, strict=True):
                self._prior_sum[(task, key)] += p

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        names, parsed, malformed = self._parsed(completions, kwargs)
        queries: dict[int, Any] = {}
        task_of: dict[int, str] = {}
        pairs: dict[tuple[str, str], int] = {}  # distinct (prompt, target) -> slot
        for i, task, answer, row in parsed:
            query = task.likelihood_queries(answer, _json(row["known"]) or {}, _json(row["unknown"]),
                                            _seed(row["seed"]))
            for pair in zip(query.prompts, query.targets, strict=True):
                pairs.setdefault(pair, len(pairs))
            queries[i] = query
            task_of[i] = task.name

        score_seconds = 0.0
        rewards = [0.0] * n
        if queries:
            if self.score is None:
                raise RuntimeError("DualLikelihoodReward.score is not set; attach the policy's score function first")
            start = time.perf_counter()
            distinct = list(pairs)
            scored = self.score([p for p, _ in distinct], [t for _, t in distinct])
            score_seconds = time.perf_counter() - start
            if len(scored) != len(distinct):
                raise ValueError(f"score returned {len(scored)} values for {len(distinct)} pairs")
            values = {i: [scored[pairs[pair]] for pair in zip(query.prompts, query.targets, strict=True)]
                      for i, query in queries.items()}
            if self.calibrate:
                units: dict[tuple[Any, ...], tuple[str, Sequence[str], list[float]]] = {}
                for i, query in queries.items():  # the answers of one cell share their query: count it once
                    if query.keys and len(query.keys) > 1:
                        units[(task_of[i], tuple(query.prompts), tuple(query.targets))] = (
                            task_of[i], query.keys, likelihood_posterior(values[i], self.temperature))
                self._update_prior(list(units.values()))
            for i, query in queries.items():
                prior = (self.candidate_prior(task_of[i], query.keys)
                         if self.calibrate and query.keys and len(query.keys) > 1 else None)
                rewards[i] = likelihood_reward(values[i], query.index, self.temperature, prior)

        stats = {
            "primal_malformed_rate": malformed / n if n else 0.0,
            "score_seconds": score_seconds,
            "n_scored": float(len(pairs)),
            **_per_task_means(names, rewards),
        }
        self._publish(stats, kwargs)
        return rewards


def likelihood_posterior(scores: Sequence[Any], temperature: float = 1.0) -> list[float]:
    """Softmax of ``scores[*].logprob / temperature`` (the posterior over the candidates)."""
    logits = [s.logprob / temperature for s in scores]
    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    total = sum(weights)
    return [w / total for w in weights]


def likelihood_reward(scores: Sequence[Any], index: int, temperature: float = 1.0,
                      prior: Sequence[float] | None = None) -> float:
    """Softmax of ``scores[*].logprob / temperature`` at ``index``; one score: its per-token probability.

    ``prior`` (the dual's mean posterior per candidate, :meth:`DualLikelihoodReward.candidate_prior`)
    divides the posterior before renormalising: the calibrated reward.
    """
    if len(scores) == 1:
        value = math.exp(scores[0].mean_logprob)
    else:
        posterior = likelihood_posterior(scores, temperature)
        if prior is not None:
            if len(prior) != len(posterior) or min(prior) <= 0:
                raise ValueError(f"prior {prior!r} does not fit {len(posterior)} candidates")
            posterior = [p / q for p, q in zip(posterior, prior, strict=True)]
        value = posterior[index] / sum(posterior)
    if not 0.0 <= value <= 1.0:  # NaN too: a scorer bug, never a silent reward
        raise ValueError(f"likelihood reward {value!r} outside [0, 1] (scores {scores})")
    return value


class GroundTruthReward(_TaskReward):
    """The supervised-RLVR oracle: label accuracy (classification) or RWJS to the real cell.

    Reads the ``target`` column (``rl_oracle`` rows). A baseline for ablations, never used by the
    self-supervised method.
    """

    __name__ = "ground_truth"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        if kwargs.get("target") is None:
            raise ValueError("GroundTruthReward needs the 'target' column (use the rl_oracle dataset)")
        names, parsed, malformed = self._parsed(completions, kwargs, ("target",))
        rewards = [0.0] * n
        for i, task, answer, row in parsed:
            if row["target"] is None:
                raise ValueError(f"row {i}: no 'target' value (use the rl_oracle dataset)")
            rewards[i] = _checked(task.ground_truth_score(_json(row["target"]), answer), task)
        stats = {"primal_malformed_rate": malformed / n if n else 0.0, **_per_task_means(names, rewards)}
        self._publish(stats, kwargs)
        return rewards


def _checked(value: Any, task: Task) -> float:
    """A score from our own code: outside [0, 1] (or NaN) is a bug, never a silent 0."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{type(task).__name__}.ground_truth_score returned {value!r}, outside [0, 1]")
    return value
