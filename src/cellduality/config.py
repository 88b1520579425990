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
    ctx = first.get("ctx") or {}
    # errors raised by a model validator carry the key in ctx (their loc is empty)
    loc = str(ctx.get("key") or ".".join(str(p) for p in first["loc"]))
    if "message" in ctx:
        return f"{source}: {ctx['message']}"
    if first["type"] == "extra_forbidden":
        if "hint" in ctx:
            return f"{source}: unknown key '{loc}'.{ctx['hint']}"
        valid = list(model.model_fields)
        close = difflib.get_close_matches(loc.rsplit(".", 1)[-1], valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(valid)}."
        return f"{source}: unknown key '{loc}'.{hint}"
    return f"{source}: invalid value for '{loc}': {first['msg']}."


def validate_config(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Build ``model`` from ``data``; raise :class:`ConfigError` with a one-line message."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, model, source)) from None


def load_config(model: type[M], path: str | Path | None = None, /, **overrides: Any) -> M:
    """Load a YAML config into ``model``; keyword ``overrides`` that are not ``None`` win.

    ``model`` and ``path`` are positional-only, so a setting may itself be called ``model``.
    """
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(model, data, source=str(path) if path else "options")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping; one-line :class:`ConfigError` when missing or malformed."""
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
    return loaded


def merge_configs(base: dict[str, Any], override: dict[str, Any], replace: tuple[str, ...] = ()) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge key by key (a section is not replaced
    wholesale, so ``grpo: {max_steps: 50}`` keeps the base's other GRPO keys), except the top-level
    keys in ``replace`` (a list of things, such as the datasets to run, is the user's list)."""
    out = dict(base)
    for key, value in override.items():
        merge = key not in replace and isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_configs(out[key], value) if merge else value
    return out


def parse_assignments(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["top_k=50", "generation_kwargs={min_p: 0.05}"]`` -> ``{"top_k": 50, ...}``.

    Values are read as YAML (as in a config file), so ``true``, ``1e-6``, ``[1, 0.5]`` and
    ``{k: v}`` arrive typed; the settings model then validates them like file values.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r} is not KEY=VALUE; e.g. {option} mask_truncated_completions=true.")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{option} {item!r}: the value is not valid YAML; quote or fix it.") from None
    return out
