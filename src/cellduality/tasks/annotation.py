"""Cell type annotation: cell -> cell type; dual: inpaint hidden genes from c_obs and the type."""

from __future__ import annotations

from typing import ClassVar

from cellduality.tasks.base import DIRECT_INSTRUCTION, register_task
from cellduality.tasks.inpainting import InpaintingTask

_FORMAT = "Think step by step inside <think></think>, then give only {what} inside <answer></answer>."


@register_task
class AnnotationTask(InpaintingTask):
    """Name the type of a cell from its ranked genes; the dual inpaints masked top genes."""

    name: ClassVar[str] = "annotation"
    description: ClassVar[str] = "cell sentence -> cell type (dual: hidden genes from observed genes + type)"
    prediction_key: ClassVar[str | None] = "cell_type"
    primal_templates: ClassVar[tuple[str, ...]] = (
        "Below are the most expressed genes of a single cell, in decreasing order of expression:\n{cell}\n"
        "Which cell type is it? Choose one of: {labels}.\n" + _FORMAT.format(what="the cell type"),
        "Cell sentence (genes ranked by expression, highest first): {cell}\n"
        "Candidate cell types: {labels}.\nAnnotate this cell. " + _FORMAT.format(what="the cell type"),
        "Identify the cell type of a cell whose top expressed genes are: {cell}\n"
        "Possible types: {labels}.\n" + _FORMAT.format(what="one of the possible types"),
    )
    answer_only_template: ClassVar[str | None] = (
        "Candidate cell types: {labels}.\nName the type of the cell below, only the type inside "
        "<answer></answer>.\nIts most expressed genes, highest first: {cell}\n" + DIRECT_INSTRUCTION
    )
    dual_templates: ClassVar[tuple[str, ...]] = (
        "This is a {label} cell. Its top genes are listed by decreasing expression, with {n_hidden} "
        "genes hidden as ___:\n{masked}\nName the hidden genes in rank order. "
        + _FORMAT.format(what="the hidden genes, separated by spaces,"),
        "Cell type: {label}. Ranked cell sentence with {n_hidden} masked positions (___): {masked}\n"
        "Fill in the masked genes, highest ranked first. " + _FORMAT.format(what="the masked genes"),
    )
