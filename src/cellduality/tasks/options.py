"""Typed task options: one pydantic model per task, the single source of names, types and defaults.

A task declares ``options_model`` (a subclass of :class:`TaskOptions`); :class:`~.base.Task`
validates its options through it, ``cellduality tasks build --option task.key=value`` converts and
checks command-line text through the same model, and ``tasks.json`` records the validated values.
So a typo (``n_hiden``) is an error with a suggestion, ``include_control=false`` is ``False``
rather than a truthy string, and a default lives in exactly one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cellduality.errors import CellDualityError

DEFAULT_MAX_GENES = 32
"""Genes of a cell shown in a prompt. Prompt length drives training cost on small CPUs."""


class TaskOptions(BaseModel):
    """Options every task accepts. Unknown names are errors; text is converted to the field's type."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    label_key: str | None = Field(None, description="obs column with the label (default: the one `sentences` "
                                                     "recorded); tasks without a label column ignore it")
    max_genes: int = Field(DEFAULT_MAX_GENES, ge=2, description="genes of a cell shown in prompts")


class InpaintingOptions(TaskOptions):
    """Label prediction whose dual inpaints hidden genes (:mod:`cellduality.tasks.inpainting`)."""

    n_hidden: int = Field(8, ge=1, description="genes the dual must inpaint (m)")
    hide: Literal["interleaved", "random", "tail", "rare"] = Field(
        "interleaved", description="which genes are hidden: every other of ranks 1..2m, m random, the last m, "
                                   "or the m least frequent in the training cells (label-free)")
    labels: list[str] | None = Field(None, min_length=2, description="candidate labels (comma-separated on the "
                                                                      "command line); makes unlabelled data usable")

    @field_validator("labels", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


_MESSAGES = {
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
}


def _describe(err: ValidationError, task: str, model: type[TaskOptions], where: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "?"
    ctx = first.get("ctx") or {}
    kind = first["type"]
    if kind == "extra_forbidden":
        known = sorted(model.model_fields)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{where}{task}.{key}: unknown option of task '{task}'; {hint}known: {', '.join(known)}."
    if kind in _MESSAGES:
        text = _MESSAGES[kind]
    elif kind in ("greater_than_equal", "greater_than"):
        text = f"must be at least {ctx.get('ge', ctx.get('gt'))}"
    elif kind == "literal_error":
        text = f"choose one of {ctx.get('expected', '').replace(' or ', ', ')}"
    elif kind == "too_short" and key == "labels":
        text = "give at least two comma-separated labels"
    else:
        text = first["msg"].lower()
    return f"{where}{task}.{key}={first.get('input')!s}: {text}."


def validate_options(task: str, model: type[TaskOptions], values: Mapping[str, Any], where: str = "option ") -> TaskOptions:
    """``values`` validated by ``model``; a :class:`CellDualityError` of one line otherwise."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        raise CellDualityError(_describe(err, task, model, where)) from None
