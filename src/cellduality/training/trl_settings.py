"""Settings that extend TRL's configs: our own fields, plus any field of ``trl.GRPOConfig`` / ``trl.SFTConfig``.

Why a pass-through and not a dataclass subclass of TRL's config: our settings are validated
(one-line errors, ``extra='forbid'`` semantics) long before a trainer exists -- in pipeline
configs, dry runs and tests -- and importing TRL costs seconds, so a config that only uses our
own keys never imports it. A key that is not one of our fields is looked up in TRL's dataclass:
a TRL field is converted to the field's annotated type and handed to TRL's config unchanged
(TRL's own ``__post_init__`` then checks it as usual); anything else is an unknown key with a
"did you mean". Our declared fields that share a TRL name are the places where CellDuality
chooses a different default than TRL (or resolves a value, e.g. ``bf16: null`` = by hardware);
CPU-safe values are applied in one place, :func:`cellduality.training.common.device_args`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any, ClassVar

from pydantic import ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from cellduality.config import StrictModel


@functools.cache
def trl_fields(config: str) -> dict[str, Any]:
    """``{name: type}`` of every ``__init__`` field of ``trl.<config>`` (e.g. ``"GRPOConfig"``)."""
    import trl

    cls = getattr(trl, config)
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _adapter(config: str, name: str) -> TypeAdapter:
    return TypeAdapter(trl_fields(config)[name])


class TRLSettings(StrictModel):
    """Base of :class:`~cellduality.training.grpo.GRPOSettings` and :class:`~cellduality.training.sft.SFTSettings`.

    Subclasses name the TRL config they extend (``trl_config``) and the TRL fields CellDuality
    sets itself (``derived``: field -> what to set instead; ``output_dir`` always), which a config
    may not set.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=())
    trl_config: ClassVar[str]
    derived: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _trl_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        extra = [key for key in data if key not in cls.model_fields]
        if not extra:
            return data
        fields = trl_fields(cls.trl_config)
        derived = {"output_dir": "the OUT_DIR argument", **cls.derived}
        out = dict(data)
        for key in extra:
            if key in derived:
                message = f"'{key}' is set by CellDuality from {derived[key]}; set that instead."
                raise PydanticCustomError("derived_key", message, {"key": key, "message": message})
            if key not in fields:
                close = difflib.get_close_matches(key, [*cls.model_fields, *(set(fields) - set(derived))], n=3)
                hint = (f" Did you mean {', '.join(close)}?" if close else
                        f" Valid keys: the fields of {cls.__name__} and of trl.{cls.trl_config}.")
                raise PydanticCustomError("extra_forbidden", "unknown key", {"key": key, "hint": hint})
            try:
                out[key] = _adapter(cls.trl_config, key).validate_python(data[key])
            except ValidationError as err:
                raise PydanticCustomError("trl_value", "{msg}", {"key": key, "msg": err.errors()[0]["msg"]}) from None
        return out

    def trl_kwargs(self) -> dict[str, Any]:
        """Every value TRL's config knows by name: our fields that share a TRL name, and pass-through keys."""
        fields = trl_fields(self.trl_config)
        values = {name: getattr(self, name) for name in type(self).model_fields if name in fields}
        return {**values, **(self.model_extra or {})}
