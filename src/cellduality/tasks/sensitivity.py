"""Drug sensitivity: cell + drug -> sensitive/resistant; dual: inpaint hidden genes from c_obs,
the drug and the predicted label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from cellduality.errors import CellDualityError
from cellduality.tasks.base import DIRECT_INSTRUCTION, register_task
from cellduality.tasks.inpainting import InpaintingTask
from cellduality.tasks.options import InpaintingOptions, TaskOptions

if TYPE_CHECKING:  # pragma: no cover
    from cellduality.sentences import CellSentenceDataset

_FORMAT = "Think step by step inside <think></think>, then give only {what} inside <answer></answer>."


class SensitivityOptions(InpaintingOptions):
    """Options of :class:`SensitivityTask`: the inpainting ones plus where the drug comes from."""

    drug_key: str = Field("drug", description="obs column with the drug")
    drug: str | None = Field(None, description="the drug of a single-drug data set without a drug column")


@register_task
class SensitivityTask(InpaintingTask):
    """Predict whether a treated cell is sensitive or resistant; the drug is part of ``x_k``.

    The drug comes from the ``drug_key`` obs column (default ``drug``) or, for a single-drug
    data set without such a column, from the ``drug`` option.
    """

    name: ClassVar[str] = "sensitivity"
    description: ClassVar[str] = "cell sentence + drug -> sensitive/resistant (dual: hidden genes)"
    options_model: ClassVar[type[TaskOptions]] = SensitivityOptions
    default_label_key: ClassVar[str | None] = "sensitivity"
    extra_keys: ClassVar[tuple[str, ...]] = ("drug",)
    primal_templates: ClassVar[tuple[str, ...]] = (
        "A cancer cell was exposed to {drug}. Its most expressed genes, highest first:\n{cell}\n"
        "Is this cell sensitive or resistant to {drug}? Choose one of: {labels}.\n"
        + _FORMAT.format(what="the label"),
        "Drug: {drug}. Cell sentence (genes ranked by expression): {cell}\n"
        "Predict the cell's response to the drug, one of: {labels}. " + _FORMAT.format(what="the label"),
        "Given the ranked genes of a cell, {cell}, decide whether it responds to {drug}. "
        "Answer with one of: {labels}.\n" + _FORMAT.format(what="the label"),
    )
    answer_only_template: ClassVar[str | None] = (
        "Candidate responses to a drug: {labels}.\nName the response of the cell below, only the label "
        "inside <answer></answer>.\nDrug: {drug}. The cell's most expressed genes, highest first: {cell}\n"
        + DIRECT_INSTRUCTION
    )
    dual_templates: ClassVar[tuple[str, ...]] = (
        "A cell that is {label} to {drug} has these top genes by decreasing expression, with {n_hidden} "
        "hidden as ___:\n{masked}\nName the hidden genes in rank order. "
        + _FORMAT.format(what="the hidden genes, separated by spaces,"),
        "Drug: {drug}. Response: {label}. Ranked cell sentence with {n_hidden} masked positions (___): "
        "{masked}\nFill in the masked genes, highest ranked first. " + _FORMAT.format(what="the masked genes"),
    )

    @classmethod
    def extras_context(cls, cells: CellSentenceDataset, indices: Sequence[int], options: dict[str, Any]) -> dict:
        drug_key = options.get("drug_key") or SensitivityOptions().drug_key
        if drug_key in cells.obs.columns:
            options["drug_key"] = drug_key
            drugs = sorted({str(cells.obs[drug_key].iloc[i]) for i in indices})
        elif options.get("drug"):
            drugs = [str(options["drug"])]
        else:
            raise CellDualityError(
                f"Task 'sensitivity' needs column '{drug_key}' (the drug) which the cell sentences lack; "
                "keep it in `cellduality sentences` or pass the option drug=NAME for a single-drug set."
            )
        return {"drugs": tuple(drugs)}

    def inference_input(self, values: dict[str, str]) -> dict[str, Any]:
        drug = str(values["drug"])
        if self.context.drugs and drug not in self.context.drugs:
            raise CellDualityError(f"Unknown drug '{drug}' for this model; it was trained on: {', '.join(self.context.drugs)}.")
        return {"drug": drug}

    def example_extras(self, cells: CellSentenceDataset, index: int) -> dict[str, str]:
        drug_key = self.options.get("drug_key")
        if drug_key and drug_key in cells.obs.columns:
            return {"drug": str(cells.obs[drug_key].iloc[index])}
        return {"drug": str(self.options.get("drug") or self.context.drugs[0])}
