"""The one teacher interface: N chain-of-thought candidates per prompt.

A teacher writes ``<think>…</think> <answer>…</answer>`` candidates for primal and dual prompts
(paper §3.3.1); filtering then decides which to keep. Both the API teacher and the offline
knowledge-grounded teacher implement :class:`Teacher`, so the SFT builder never knows which one
it talks to.

A :class:`TeacherRequest` carries the prompt plus what a knowledge-grounded teacher may read: the
task, the row's ``known``/``unknown`` parts (the *input* of the primal task) and, for dual rows
only, the reference answer (the paper prompts the teacher to explain the known dual answer). The
primal ``target`` is never put into a request, so rejection sampling of primal answers stays a
real test of the teacher.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Direction = Literal["primal", "dual"]


@dataclass(frozen=True)
class TeacherRequest:
    """One prompt to answer ``n`` times.

    ``key`` identifies the row (``split/direction/id``) for logs and failure records;
    ``reference`` (the canonical dual answer ``x_u``) and ``target`` (the reference primal output
    ``y*`` the dual prompt is built from) are only set for dual rows.
    """

    key: str
    task: str
    direction: Direction
    prompt: str
    known: dict[str, Any] = field(default_factory=dict)
    unknown: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    target: Any = None
    seed: int = 0


@dataclass
class Generation:
    """The candidates for one request; ``error`` says why there are none (never raised)."""

    texts: list[str]
    error: str | None = None
    cached: bool = False


@dataclass
class Usage:
    """Token and cost accounting of one teacher (thread-safe counters)."""

    requests: int = 0
    api_calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, value in amounts.items():
                setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        data["cost_usd"] = round(float(data["cost_usd"]), 6)
        return data


class Teacher(ABC):
    """Writes ``n`` candidate responses per request."""

    name: str = "teacher"

    def __init__(self) -> None:
        self.usage = Usage()

    @abstractmethod
    def generate(self, requests: Sequence[TeacherRequest], n: int) -> list[Generation]:
        """One :class:`Generation` per request, in order. Per-request failures are records, not raises."""

    def describe(self) -> dict[str, Any]:
        """Settings that identify this teacher's outputs (for reports and resume checks; no secrets)."""
        return {"teacher": self.name}
