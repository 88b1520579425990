"""The four reasoning tasks as primal/dual pairs (paper Definition 3.1).

``get_task(name, context)`` builds one; a new task is one module that subclasses
:class:`~cellduality.tasks.base.Task`, decorates it with ``@register_task`` and is imported here.
"""

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
    "load_tasks",
    "loads",
    "register_task",
]
