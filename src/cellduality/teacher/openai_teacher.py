"""Teacher behind any OpenAI-compatible chat-completions endpoint (hosted models, vLLM, ...).

Why it is built this way:

* **Concurrency** with a thread pool: the ``openai`` client is thread-safe and the work is I/O.
* **Own retries** (the client's are switched off) with exponential backoff and jitter on
  timeouts, 429, 5xx and malformed or empty responses, so every failure mode is counted and a
  request that stays broken becomes a :class:`~cellduality.teacher.base.Generation` with an
  ``error`` -- one bad prompt never ends a run of thousands.
* **A teacher that is down** (connection refused after every retry), a rejected key (401/403) or
  an unknown model/URL (404) *do* end the run, with one :class:`TeacherError` line: no later
  request can succeed either.
* **An on-disk cache** (:class:`~cellduality.teacher.cache.ResponseCache`) keyed by messages,
  model and sampling parameters, so an interrupted run pays only for what it had not received.
* **The API key** is read from an environment variable only, passed to the client and nowhere
  else: not into cache keys, cache values, reports or log lines.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cellduality.errors import TeacherError
from cellduality.redaction import redact
from cellduality.teacher.base import Generation, Teacher, TeacherRequest
from cellduality.teacher.cache import ResponseCache, cache_key

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are an expert single-cell biologist. Cells are written as cell sentences: gene symbols "
    "ordered from most to least expressed. Reason briefly and concretely (40-120 words), citing the "
    "specific genes and their ranks that support your conclusion, then give the final answer. Reply "
    "exactly as: <think> your reasoning </think> <answer> final answer only </answer>"
)

DUAL_HINT = (
    "\n\nThe correct answer is: {reference}\n"
    "Write the reasoning that leads to this answer from the information in the question, then "
    "repeat the answer exactly inside <answer></answer>."
)


class _RequestFailed(Exception):
    """A request that failed: retried inside the loop when transient, a failure record when final."""


def _texts_from(response: Any) -> tuple[list[str], int, int]:
    """Non-empty message texts and token usage of a chat completion; raise :class:`_RequestFailed` if malformed."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise _RequestFailed("malformed response (no choices)")
    texts: list[str] = []
    for choice in choices:
        content = getattr(getattr(choice, "message", None), "content", None)
        if isinstance(content, str) and content.strip():
            texts.append(content.strip())
    usage = getattr(response, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
    completion_tokens = getattr(usage, "completion_tokens", 0) or 0
    return texts, int(prompt_tokens), int(completion_tokens)


def _is_default_openai(base_url: str | None) -> bool:
    return base_url is None or "api.openai.com" in base_url


class OpenAITeacher(Teacher):
    """N candidates per prompt from an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        temperature: float = 0.8,
        max_tokens: int = 512,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        api_key_env: str = "OPENAI_API_KEY",
        cache_path: str | Path | None = None,
        price_prompt_per_million: float = 0.0,
        price_completion_per_million: float = 0.0,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        super().__init__()
        import openai

        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            if _is_default_openai(base_url):
                raise TeacherError(
                    f"The OpenAI teacher needs an API key in the environment variable {api_key_env}; "
                    "export it (keys are never read from files or flags)."
                )
            api_key = "EMPTY"  # local servers (vLLM, ...) accept any key
        self.model = model
        self.base_url = base_url
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.price_prompt = float(price_prompt_per_million)
        self.price_completion = float(price_completion_per_million)
        self.system_prompt = system_prompt
        self.cache = ResponseCache(cache_path) if cache_path is not None else None
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)

    # ------------------------------------------------------------------ public API
    def describe(self) -> dict[str, Any]:
        return {
            "teacher": self.name,
            "model": self.model,
            "base_url": redact(self.base_url or "https://api.openai.com/v1"),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def messages(self, request: TeacherRequest) -> list[dict[str, str]]:
        """Chat messages for ``request``; dual rows are told the reference answer to explain."""
        user = request.prompt
        if request.direction == "dual" and request.reference is not None:
            user += DUAL_HINT.format(reference=request.reference)
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def generate(self, requests: Sequence[TeacherRequest], n: int) -> list[Generation]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = [pool.submit(self._one, request, n) for request in requests]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    # ------------------------------------------------------------------ internals
    def _one(self, request: TeacherRequest, n: int) -> Generation:
        self.usage.add(requests=1)
        messages = self.messages(request)
        key = cache_key(
            {
                "messages": messages,
                "model": self.model,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "n": n,
            }
        )
        texts: list[str] = []
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            texts = list(hit.texts)[:n]
            if len(texts) >= n:
                self.usage.add(cache_hits=1)
                return Generation(texts, cached=True)
        error = None
        try:
            texts += self._call_with_retries(request, messages, n - len(texts))
        except _RequestFailed as exc:
            error = str(exc)
        if self.cache is not None and texts:
            self.cache.put(key, texts)
        if not texts:
            self.usage.add(failures=1)
            return Generation([], error=f"{request.key}: {error or 'no usable candidates'}")
        return Generation(texts, error=None if len(texts) >= n else f"{request.key}: only {len(texts)} of {n} candidates ({error})")

    def _call_with_retries(self, request: TeacherRequest, messages: list[dict[str, str]], n: int) -> list[str]:
        """Collect ``n`` non-empty texts, retrying transient failures; raise :class:`_RequestFailed` when out of retries."""
        oai = self._openai
        texts: list[str] = []
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
                log.warning("teacher %s: %s; retry %d/%d in %.1f s", request.key, last, attempt, self.max_retries, delay)
                self.usage.add(retries=1)
                time.sleep(delay)
            try:
                self.usage.add(api_calls=1)
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    n=n - len(texts),
                )
                new, prompt_tokens, completion_tokens = _texts_from(response)
                self.usage.add(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cost_usd=(prompt_tokens * self.price_prompt + completion_tokens * self.price_completion) / 1e6,
                )
                texts += new
                if len(texts) >= n:
                    return texts[:n]
                last = "empty or missing completion text"
            except _RequestFailed as exc:
                last = str(exc)
            except oai.APITimeoutError:
                last = "request timed out"
            except oai.APIConnectionError as exc:
                last = redact(f"connection failed ({exc.__cause__ or exc})")
                if attempt == self.max_retries:
                    where = redact(self.base_url or "https://api.openai.com/v1")
                    raise TeacherError(
                        f"The teacher API at {where} is unreachable ({last}); start the server or fix --base-url."
                    ) from None
            except (oai.AuthenticationError, oai.PermissionDeniedError) as exc:
                raise TeacherError(
                    f"The teacher API rejected the credentials (HTTP {exc.status_code}); check the API key environment variable."
                ) from None
            except oai.NotFoundError:
                raise TeacherError(
                    f"The teacher API has no model '{self.model}' or no /chat/completions route (HTTP 404); check --model and --base-url."
                ) from None
            except oai.APIStatusError as exc:
                if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                    last = f"HTTP {exc.status_code}"
                else:  # a 400-class error for this prompt: retrying cannot help
                    raise _RequestFailed(f"HTTP {exc.status_code}: {str(exc.message)[:200]}") from None
            except Exception as exc:  # garbage body, invalid JSON, unexpected shapes
                last = f"malformed response ({type(exc).__name__})"
        if texts:
            return texts
        raise _RequestFailed(redact(f"gave up after {self.max_retries + 1} attempts: {last}"))
