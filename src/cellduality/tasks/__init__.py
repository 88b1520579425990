"""The four reasoning tasks as primal/dual pairs (paper Definition 3.1).

``get_task(name, context)`` builds one; a new task is one module that subclasses
:class:`~cellduality.tasks.base.Task` and decorates it with ``@register_task``. The built-in ones
are imported here; others are found by :func:`load_plugins` (no edit of the package needed).
"""

import importlib
import os

from cellduality.tasks import annotation, generation, perturbation, sensitivity  # noqa: F401  (register)
from cellduality.tasks.base import (
    TASKS,
    Example,
    Task,
    TaskContext,
    dumps,
    extract_answer,
    format_response,
    get_task,
    loads,
    register_task,
)
from cellduality.tasks.builders import build_task_datasets, load_tasks

PLUGIN_ENV = "CELLDUALITY_TASKS"
ENTRY_POINT_GROUP = "cellduality.tasks"


def load_plugins() -> list[str]:
    """Import the task modules of plug-ins; return their module names.

    Modules named in the ``CELLDUALITY_TASKS`` environment variable (comma-separated, importable
    from ``sys.path``) and the ``cellduality.tasks`` entry points of installed packages. Importing a
    module runs its ``@register_task``, so the ``cellduality`` command and every stage see the task.
    A module that cannot be imported is an error: a task silently missing would surface much later.
    """
    from importlib.metadata import entry_points

    from cellduality.errors import CellDualityError

    names = [n.strip() for n in os.environ.get(PLUGIN_ENV, "").split(",") if n.strip()]
    names += [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise CellDualityError(f"Task plug-in module '{name}' cannot be imported ({err}); fix "
                                   f"{PLUGIN_ENV} or the package's '{ENTRY_POINT_GROUP}' entry point.") from None
    return names


load_plugins()

__all__ = [
    "TASKS",
    "Example",
    "Task",
    "TaskContext",
    "build_task_datasets",
    "dumps",
    "extract_answer",
    "format_response",
    "get_task",
    "load_plugins",
    "load_tasks",
    "loads",
    "register_task",
]
