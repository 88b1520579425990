"""Groups of command-line options shared by several commands, declared once.

typer builds a command's options from its Python signature, so an option shared by five commands
would otherwise be five copies of the same parameter list (and drift: one copy loses its help
text, another its bounds). :func:`option_group` adds a group to a command's signature and hands
the command the group's values as one keyword argument.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

__all__ = ["option", "option_group"]


def option(name: str, default: Any, annotation: Any) -> inspect.Parameter:
    """One keyword-only parameter of a group: ``default`` is the ``typer.Option(...)``."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def option_group(parameters: list[inspect.Parameter], into: str,
                 convert: Callable[..., Any] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: give a command the options ``parameters``; it receives their values as ``into=``
    (a dict, or ``convert(**values)``). The command declares ``into`` as a parameter defaulting to
    ``None``; typer sees the group's options in its place. Groups stack."""
    names = [p.name for p in parameters]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(*args, **{into: convert(**values) if convert else values}, **kwargs)

        # annotations resolved in the command's own module (typer would read strings in this one)
        hints = get_type_hints(command)
        kept = [p.replace(annotation=hints.get(p.name, p.annotation))
                for p in signature.parameters.values() if p.name != into]
        wrapper.__signature__ = signature.replace(parameters=kept + parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {k: v for k, v in hints.items() if k != into} | {
            p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer must see the new signature, not the wrapped one
        return wrapper

    return decorate
