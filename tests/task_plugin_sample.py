"""A fifth task defined outside the package: the whole plug-in is this one module (issue #11).

``condition``: name the sample / condition a cell comes from (here pbmc68k_reduced's cell-cycle
``phase``) from its ranked genes; the dual inpaints masked top genes from the observed genes and the
condition -- the complementary dual of annotation (paper §3.4.1), so the class subclasses
:class:`~cellduality.tasks.inpainting.InpaintingTask` and declares only what differs:

* its name, prompts and the obs column it reads by default;
* its options (one pydantic model: here a smaller default ``n_hidden``);
* everything else -- parsing, distance, likelihood queries, how the input cell is rebuilt, the
  offline teacher's trace writer (``offline_traces = "labels"``), baselines and headline metrics --
  is inherited from the declarations of ``InpaintingTask`` / ``Task``.

Importing this module registers the task (``@register_task``); nothing in ``src/`` names it.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cellduality.tasks import register_task
from cellduality.tasks.inpainting import InpaintingTask
from cellduality.tasks.options import InpaintingOptions, TaskOptions

_FORMAT = "Think step by step inside <think></think>, then give only {what} inside <answer></answer>."


class ConditionOptions(InpaintingOptions):
    """The inpainting options, with a dual that hides fewer genes by default."""

    n_hidden: int = Field(4, ge=1, description="genes the dual must inpaint")


@register_task
class ConditionTask(InpaintingTask):
    """Which sample / condition does this cell come from? The dual inpaints hidden genes."""

    name: ClassVar[str] = "condition"
    description: ClassVar[str] = "cell sentence -> sample/condition (dual: hidden genes from observed genes + condition)"
    options_model: ClassVar[type[TaskOptions]] = ConditionOptions
    default_label_key: ClassVar[str | None] = "condition"
    primal_templates: ClassVar[tuple[str, ...]] = (
        "The most expressed genes of a single cell, highest first:\n{cell}\n"
        "Which condition does the cell come from? Choose one of: {labels}.\n" + _FORMAT.format(what="the condition"),
        "Cell sentence: {cell}\nPossible conditions: {labels}.\nName the cell's condition. "
        + _FORMAT.format(what="the condition"),
    )
    dual_templates: ClassVar[tuple[str, ...]] = (
        "A cell from condition {label} has these top genes, with {n_hidden} hidden as ___:\n{masked}\n"
        "Name the hidden genes in rank order. " + _FORMAT.format(what="the hidden genes, separated by spaces,"),
    )
