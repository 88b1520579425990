"""Validated configuration files.

Configs are YAML mapped onto pydantic models with ``extra='forbid'``, so a typo such as
``learning_rat`` is rejected with a one-line message naming the key and the closest valid keys,
instead of being silently ignored.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cellduality.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _describe(err: ValidationError, model: type[BaseModel], source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        valid = list(model.model_fields)
        close = difflib.get_close_matches(str(first["loc"][-1]), valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(valid)}."
        return f"{source}: unknown key '{loc}'.{hint}"
    return f"{source}: invalid value for '{loc}': {first['msg']}."


def validate_config(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Build ``model`` from ``data``; raise :class:`ConfigError` with a one-line message."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, model, source)) from None


def load_config(model: type[M], path: str | Path | None = None, **overrides: Any) -> M:
    """Load a YAML config into ``model``; keyword ``overrides`` that are not ``None`` win."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file {p} does not exist; pass an existing YAML file to --config.")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"Config file {p} is not valid YAML{where}; fix the syntax.") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {p} must be a mapping of keys to values.")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(model, data, source=str(path) if path else "options")
