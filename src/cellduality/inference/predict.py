"""Use a trained model on your own cells, scverse style: AnnData in, AnnData out.

* :func:`annotate` — cell type per cell. Default (``method="fast"``): labels ranked by likelihood
  in one forward pass per cell, confidence = the label posterior, reasoning only for the cells
  asked (:mod:`cellduality.inference.fast`). ``method="rerank"``: sample ``n_samples`` answers
  with reasoning, score each distinct answer by how well the model's own dual task rebuilds the
  cell's hidden genes from it (the paper's duality, used at inference time), keep the best.
* :func:`predict_sensitivity` — sensitive/resistant to a drug, by the same two methods.
* :func:`generate_cells` — new cells of a requested type: sentences and reconstructed expression.
* :func:`perturb` — the response of each given cell to a perturbation.

Results go into ``.obs`` / ``.obsm`` / ``.uns['cellduality']`` of a *copy* unless ``copy=False``;
the caller's other data is never touched and input files are never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellduality.duality import DualQuery, dual_pass
from cellduality.errors import CellDualityError
from cellduality.inference.model import CellDualityModel, GenerateFn
from cellduality.tasks.base import Example, Task, extract_reasoning, format_response
from cellduality.tasks.text import stable_seed

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

KEY = "cellduality"
METHODS = ("fast", "rerank")


@dataclass
class RankedAnswer:
    """The kept answer of one example after duality reranking."""

    answer: Any
    confidence: float
    votes: int
    n_valid: int
    reasoning: str
    scores: dict[str, float]


def _as_model(model: CellDualityModel | str, device: str | None = None) -> CellDualityModel:
    return model if isinstance(model, CellDualityModel) else CellDualityModel.load(model, device=device)


def duality_rerank(
    task: Task,
    examples: list[Example],
    sample: GenerateFn,
    dual: GenerateFn,
    n_samples: int,
) -> list[RankedAnswer]:
    """Sample answers, score each distinct one by its own dual reconstruction, keep the best.

    All primal samples go to ``sample`` in one batch and all dual prompts to ``dual`` in one
    batch. The confidence of the kept answer is its duality score in [0, 1] (RWJS of the rebuilt
    hidden genes for classification tasks); ties are broken by the number of samples agreeing.
    """
    prompts = [task.primal_prompt(ex) for ex in examples for _ in range(n_samples)]
    texts = sample(prompts) if prompts else []
    candidates: list[dict[str, list[str]]] = []  # per example: rendered answer -> the samples giving it
    parsed: list[dict[str, Any]] = []  # per example: rendered answer -> the answer
    for i in range(len(examples)):
        by_answer: dict[str, list[str]] = {}
        answers: dict[str, Any] = {}
        for text in texts[i * n_samples : (i + 1) * n_samples]:
            answer = task.parse_primal(text)
            if answer is not None:
                rendered = task.render_answer(answer)
                answers.setdefault(rendered, answer)
                by_answer.setdefault(rendered, []).append(text)
        candidates.append(by_answer)
        parsed.append(answers)

    splits = [task.split(ex) for ex in examples]
    jobs = [(i, rendered) for i, by_answer in enumerate(candidates) for rendered in by_answer]
    results = dual_pass([DualQuery(task, parsed[i][rendered], splits[i][0], examples[i].seed, splits[i][1])
                         for i, rendered in jobs], dual)
    scores: list[dict[str, float]] = [{} for _ in examples]
    for (i, rendered), result in zip(jobs, results, strict=True):
        scores[i][rendered] = result.score

    ranked = []
    for i, by_answer in enumerate(candidates):
        if not by_answer:
            first = texts[i * n_samples] if texts else ""
            ranked.append(RankedAnswer(None, 0.0, 0, 0, extract_reasoning(first), {}))
            continue
        best = max(by_answer, key=lambda a: (scores[i].get(a, 0.0), len(by_answer[a])))
        ranked.append(
            RankedAnswer(
                answer=parsed[i][best],
                confidence=float(scores[i].get(best, 0.0)),
                votes=len(by_answer[best]),
                n_valid=sum(len(v) for v in by_answer.values()),
                reasoning=extract_reasoning(by_answer[best][0]),
                scores=dict(scores[i]),
            )
        )
    return ranked


RANK_DEPTH = 1000
"""How deep each cell is ranked before keeping the model's genes (deeper genes cannot reach a prompt)."""


def model_sentences(adata: AnnData, task: Task, seed: int, **sentence_options: Any) -> tuple[list[list[str]], dict]:
    """The user's cells as the model saw cells in training: ranked *within the model's gene panel*.

    A model only ever saw sentences made of its training genes (e.g. the 765 genes of
    pbmc68k_reduced), so each cell is ranked over all its genes and then filtered to the model's
    vocabulary, which keeps the order (per-cell normalisation and log1p are monotone), before
    taking the prompt's ``max_genes``. Returns the cells and the overlap figures.
    """
    from cellduality.sentences import ranked_genes

    vocab = task.context.genes
    max_genes = int(task.options.get("max_genes", 32))
    symbols, indptr, genes = ranked_genes(adata, top_k=RANK_DEPTH, seed=seed, **sentence_options)
    names = np.asarray(symbols, dtype=object)
    in_vocab = np.fromiter((s in vocab for s in symbols), dtype=bool, count=len(symbols))
    # on indices, not text: each cell's ranked genes filtered to the panel, the first max_genes kept
    row = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    panel = in_vocab[genes]
    kept, kept_row = genes[panel], row[panel]
    per_row = np.bincount(kept_row, minlength=indptr.size - 1)
    rank = np.arange(kept.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    first = rank < max_genes
    bounds = np.cumsum(np.minimum(per_row, max_genes))[:-1]
    cells = [part.tolist() for part in np.split(names[kept[first]], bounds)] if per_row.size else []
    known, total = gene_overlap([names[np.unique(kept)].tolist()], vocab)  # the panel's genes the cells express
    return cells, {"model_genes": total, "model_genes_in_data": known, "overlap": round(known / max(1, total), 4)}


def gene_overlap(cells: list[list[str]], vocabulary: frozenset[str] | set[str]) -> tuple[int, int]:
    """(genes of the model's vocabulary expressed in ``cells``, size of the vocabulary)."""
    seen = {g for genes in cells for g in genes}
    return len(seen & set(vocabulary)), len(set(vocabulary))


def _check_overlap(overlap: dict[str, Any], cells: list[list[str]], min_overlap: float) -> None:
    if not any(cells):
        raise CellDualityError("No cell expresses any gene the model knows; check gene identifiers (symbols, species).")
    if overlap["overlap"] < min_overlap:
        raise CellDualityError(
            f"Only {overlap['model_genes_in_data']} of the model's {overlap['model_genes']} genes "
            f"({overlap['overlap']:.0%}) are expressed in your cells (threshold {min_overlap:.0%}); "
            "check gene identifiers (symbols, species) or lower --min-overlap."
        )


def _prepare(adata: AnnData, copy: bool) -> AnnData:
    if adata.n_obs == 0:
        raise CellDualityError("The AnnData has no cells.")
    return adata.copy() if copy else adata


def cell_examples(task: Task, names: Any, cells: Sequence[list[str] | None],
                  extra_input: Mapping[str, Any] | Sequence[Mapping[str, Any]], seed: int) -> list[Example]:
    """One unlabelled example per cell (seeded by the cell's name: the same cell, the same prompt).

    The cell goes under the task's :attr:`~cellduality.tasks.base.Task.cell_input` (none when it
    reads no cell); ``extra_input`` holds the other input fields, one mapping for all cells or one per cell.
    """
    extras = [extra_input] * len(cells) if isinstance(extra_input, Mapping) else list(extra_input)
    field = task.cell_input
    return [Example(id=str(name), task=task.name, input={**({field: genes} if field else {}), **extra}, target=None,
                    seed=stable_seed(seed, task.name, str(name)))
            for name, genes, extra in zip(names, cells, extras, strict=True)]


def _classify(out: AnnData, mdl: CellDualityModel, task: Task, examples: list[Example], overlap: dict[str, Any],
              run: dict[str, Any], *, key: str, n_samples: int, temperature: float, batch_size: int,
              max_new_tokens: int, seed: int, false_claims: str, tasks_dir: str | None, method: str,
              fast: dict[str, Any]) -> AnnData:
    """A label per cell into ``out`` (:func:`cellduality.inference.generic.predict`); ``run`` joins ``.uns``."""
    column = f"{key}_{task.prediction_key or task.name}"
    if method == "fast":
        return _classify_fast(out, mdl, task, examples, column, {**overlap, **run}, key=key, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, false_claims=false_claims, tasks_dir=tasks_dir,
                              seed=seed, **fast)
    sample = mdl.generator(max_new_tokens=max_new_tokens, do_sample=n_samples > 1, temperature=temperature,
                           batch_size=batch_size, seed=seed)
    greedy = mdl.generator(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    ranked = duality_rerank(task, examples, sample, greedy, n_samples)
    out.obs[column] = pd.Categorical([r.answer if r.answer is not None else "unparsed" for r in ranked])
    responses = [format_response(r.reasoning, task.render_answer(r.answer)) if r.answer is not None
                 else f"<think> {r.reasoning} </think>" for r in ranked]
    checked = _explain(out.obs, task, mdl, [task.primal_prompt(ex) for ex in examples], responses, false_claims,
                       tasks_dir, key)
    out.obs[f"{key}_confidence"] = np.array([r.confidence for r in ranked], dtype=float)
    out.obs[f"{key}_votes"] = np.array([r.votes for r in ranked], dtype=int)
    out.uns.setdefault(key, {})[task.name] = {
        "model": str(mdl.path), "method": "rerank", "n_samples": n_samples, "temperature": temperature, "seed": seed,
        "labels": list(task.context.labels), "unparsed": int(sum(r.answer is None for r in ranked)), **overlap,
        **run, "faithfulness": checked.info,
    }
    return out


def _classify_fast(out: AnnData, mdl: CellDualityModel, task: Task, examples: list[Example], column: str,
                   overlap: dict[str, Any], *, key: str, batch_size: int, max_new_tokens: int, false_claims: str,
                   tasks_dir: str | None, seed: int, explain: bool = False, explain_least_confident: int = 0,
                   direct: bool | None = None, progress: Any = None, warn: Any = None) -> AnnData:
    """Labels by likelihood; reasoning (and its faithfulness check) only for the explained cells."""
    from cellduality.inference.fast import classify_fast

    prompts = [task.primal_prompt(ex) for ex in examples]
    result = classify_fast(task, mdl, prompts, [task.split(ex) for ex in examples], explain=explain,
                           explain_least_confident=explain_least_confident, direct=direct, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, progress=progress, warn=warn)
    out.obs[column] = pd.Categorical([task.render_answer(a) for a in result.labels],
                                     categories=[task.render_answer(a) for a in task.answer_candidates()])
    out.obs[f"{key}_confidence"] = result.confidence.astype(float)
    out.obs[f"{key}_explained"] = result.explained
    idx = np.flatnonzero(result.explained)
    sub = pd.DataFrame(index=out.obs_names[idx])
    responses = [format_response(result.reasoning[i], task.render_answer(result.labels[i])) for i in idx]
    checked = _explain(sub, task, mdl, [prompts[i] for i in idx], responses, false_claims, tasks_dir, key)
    reasoning = np.full(out.n_obs, "", dtype=object)
    faithfulness = np.full(out.n_obs, np.nan)
    false = np.zeros(out.n_obs, dtype=int)
    reasoning[idx], faithfulness[idx], false[idx] = (sub[f"{key}_reasoning"].to_numpy(),
                                                     sub[f"{key}_faithfulness"].to_numpy(),
                                                     sub[f"{key}_false_claims"].to_numpy())
    out.obs[f"{key}_reasoning"] = reasoning
    # what the reasoning's own text answered ('' where not explained or no candidate): it can differ from the label
    out.obs[f"{key}_reasoning_answer"] = np.array(["" if w is None else task.render_answer(w) for w in result.written],
                                                  dtype=object)
    out.obs[f"{key}_faithfulness"] = faithfulness
    out.obs[f"{key}_false_claims"] = false
    out.uns.setdefault(key, {})[task.name] = {
        "model": str(mdl.path), **result.info, "seed": seed, "labels": list(task.context.labels), "unparsed": 0,
        **overlap, "faithfulness": checked.info,
    }
    return out


def _explain(obs: pd.DataFrame, task: Task, mdl: CellDualityModel, prompts: list[str], responses: list[str],
             false_claims: str, tasks_dir: str | None, key: str = KEY) -> Any:
    """Write ``_reasoning``, ``_faithfulness`` and ``_false_claims`` columns (under ``key``) into ``obs``.

    Every claim of the reasoning is checked against the cell in the prompt (and, when the model's
    tasks folder is known, the training frequencies): ``false_claims='mark'`` wraps a false claim
    as ``[unverified: … — why]``, ``'drop'`` removes its sentence, ``'keep'`` leaves the text as
    written. The score is the share of checked claims that are true (NaN: no checkable claim).
    """
    from cellduality.faithfulness import check_for_inference

    checked = check_for_inference(task, prompts, responses, mdl.path, false_claims, tasks_dir)
    obs[f"{key}_reasoning"] = checked.reasoning
    obs[f"{key}_faithfulness"] = np.array(checked.score, dtype=float)
    obs[f"{key}_false_claims"] = np.array(checked.false_claims, dtype=int)
    return checked


def annotate(adata: AnnData, model: CellDualityModel | str, **options: Any) -> AnnData:
    """Annotate cell types; adds ``.obs['cellduality_cell_type' | '_reasoning' | '_confidence']``
    and ``'_faithfulness' | '_false_claims'`` (see :func:`_explain` for ``false_claims`` and ``tasks_dir``).

    The generic :func:`~cellduality.inference.generic.predict` with ``task="annotation"``, whose
    options these are: ``method="fast"`` (default) ranks the labels by likelihood and writes
    reasoning only with ``explain`` or for the ``explain_least_confident`` least confident cells
    (``.obs['_explained']``); ``direct`` overrides whether the model is taken to know the
    answer-only form. ``"rerank"`` samples ``n_samples`` (4) reasoned answers per cell at
    ``temperature`` (0.8) and keeps the one its dual supports best (``.obs['_votes']``).
    ``batch_size`` (32), ``max_new_tokens`` (160), ``min_overlap`` (0.5), ``seed``, ``copy`` (True),
    ``device``, the sentence options; ``progress(stage, done, total)`` and ``warn(line)`` are for the CLI.
    """
    from cellduality.inference.generic import predict

    return predict(adata, model, "annotation", **options)


def predict_sensitivity(adata: AnnData, model: CellDualityModel | str, drug: str, **options: Any) -> AnnData:
    """Predict drug sensitivity; adds ``.obs['cellduality_sensitivity' | '_reasoning' | '_confidence']``
    and ``'_faithfulness' | '_false_claims'``; ``options`` (``method``, the explain options, ...) as
    in :func:`annotate`. The generic :func:`~cellduality.inference.generic.predict` with
    ``task="sensitivity", drug=drug``."""
    from cellduality.inference.generic import predict

    return predict(adata, model, "sensitivity", drug=drug, **options)


def predict_labels(adata: AnnData, model: CellDualityModel | str, task: str, *,
                   extra_input: dict[str, Any] | None = None, device: str | None = None, **options: Any) -> AnnData:
    """Any classification task of the model whose primal input is a cell, a plug-in task included.

    Adds ``.obs['cellduality_<prediction_key or task>' | '_reasoning' | '_confidence']`` and the run
    under ``.uns['cellduality'][task]``; ``extra_input`` holds the task's other inputs (e.g.
    ``{"drug": ...}``). ``options``: those of :func:`annotate`. The generic
    :func:`~cellduality.inference.generic.predict` restricted to classification tasks.
    """
    from cellduality.inference.generic import predict

    mdl = _as_model(model, device)
    found = mdl.task(task)
    if found.kind != "classification":
        raise CellDualityError(f"Task '{task}' is {found.kind}; predict_labels serves classification tasks.")
    return predict(adata, mdl, task, **dict(extra_input or {}), **options)


@dataclass
class GeneratedCells:
    """Primal generations of a generative task, read back by its dual, with their expression."""

    texts: list[str]
    sentences: list[list[str]]
    read_back: list[str | None]
    expression: np.ndarray
    genes: list[str]
    unparsed: int


def generate_and_read_back(task: Task, mdl: CellDualityModel, examples: list[Example], *, do_sample: bool,
                           temperature: float, batch_size: int, max_new_tokens: int, dual_tokens: int,
                           seed: int) -> GeneratedCells:
    """Generate a cell per example, let the dual task read each one back, reconstruct expression.

    The read-back is the categorical duality check of training (does the dual recover the type /
    perturbation that was asked for?), made here for every generated cell.
    """
    texts = mdl.generator(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                          batch_size=batch_size, seed=seed)([task.primal_prompt(ex) for ex in examples])
    answers = [task.parse_primal(t) for t in texts]
    idx = [i for i, a in enumerate(answers) if a is not None]
    results = dual_pass([DualQuery(task, answers[i], task.split(examples[i])[0], examples[i].seed) for i in idx],
                        mdl.generator(max_new_tokens=dual_tokens, batch_size=batch_size))
    back: list[str | None] = [None] * len(answers)
    for i, result in zip(idx, results, strict=True):
        back[i] = None if result.guess is None else task.render_unknown(result.guess)
    sentences = [list(a) if a else [] for a in answers]
    inverse = mdl.inverse
    expression = np.asarray(inverse.to_expression([" ".join(x) for x in sentences]), dtype=np.float32)
    return GeneratedCells(texts, sentences, back, expression, list(inverse.genes),
                          int(sum(a is None for a in answers)))


def generate_cells(
    model: CellDualityModel | str,
    cell_type: str,
    n: int,
    *,
    temperature: float = 0.8,
    batch_size: int = 32,
    max_new_tokens: int = 256,
    seed: int = 0,
    device: str | None = None,
    false_claims: str = "mark",
    tasks_dir: str | None = None,
) -> AnnData:
    """Generate ``n`` cells of ``cell_type``: ``.obs['cellduality_sentence']``, ``.X`` = reconstructed expression.

    Each cell is also read back by the model's dual task (``cellduality_dual_cell_type``,
    ``cellduality_consistent``), the same check the duality reward makes during training.
    """
    import anndata as ad

    mdl = _as_model(model, device)
    task = mdl.task("generation")
    asked = task.inference_input({"cell_type": cell_type})
    if n < 1:
        raise CellDualityError("-n must be at least 1.")
    examples = [Example(id=f"generated_{i}", task="generation", input=asked, target=None,
                        seed=stable_seed(seed, "generate", i)) for i in range(n)]
    cells = generate_and_read_back(task, mdl, examples, do_sample=True, temperature=temperature,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens, dual_tokens=160, seed=seed)
    obs = pd.DataFrame({
        f"{KEY}_requested_cell_type": cell_type,
        f"{KEY}_sentence": [" ".join(s) for s in cells.sentences],
        f"{KEY}_dual_cell_type": [b or "unparsed" for b in cells.read_back],
        f"{KEY}_consistent": [b == cell_type for b in cells.read_back],
    }, index=[ex.id for ex in examples])
    checked = _explain(obs, task, mdl, [task.primal_prompt(ex) for ex in examples], cells.texts, false_claims,
                       tasks_dir)
    out = ad.AnnData(X=cells.expression, obs=obs, var=pd.DataFrame(index=cells.genes))
    out.uns[KEY] = {"model": str(mdl.path), "task": "generation", "temperature": temperature, "seed": seed,
                    "unparsed": cells.unparsed, "faithfulness": checked.info}
    return out


def _respond(out: AnnData, mdl: CellDualityModel, task: Task, examples: list[Example], overlap: dict[str, Any],
             run: dict[str, Any], *, key: str, temperature: float | None, batch_size: int, max_new_tokens: int,
             seed: int, false_claims: str, tasks_dir: str | None) -> AnnData:
    """A generated cell per cell of ``out``, read back by the dual (:func:`cellduality.inference.generic.predict`).

    Writes ``.obs[f"{key}_{prediction_key}_sentence"]``, the reasoning columns, the dual's reading
    ``_dual_<x_u field>`` and whether it names what was asked (``_consistent``), and the expression
    on ``out.var_names`` in ``.obsm[f"{key}_{prediction_key}"]`` (genes the model's inverse does not
    cover are 0). ``temperature=None``: greedy decoding.
    """
    generated = generate_and_read_back(task, mdl, examples, do_sample=temperature is not None,
                                       temperature=1.0 if temperature is None else temperature,
                                       batch_size=batch_size, max_new_tokens=max_new_tokens, dual_tokens=160,
                                       seed=seed)
    name = task.prediction_key or task.name
    target = np.zeros((out.n_obs, out.n_vars), dtype=np.float32)
    where = pd.Index(generated.genes).get_indexer(pd.Index([str(v).upper() for v in out.var_names]))
    hit = where >= 0
    target[:, hit] = generated.expression[:, where[hit]]
    out.obs[f"{key}_{name}_sentence"] = [" ".join(s) for s in generated.sentences]
    checked = _explain(out.obs, task, mdl, [task.primal_prompt(ex) for ex in examples], generated.texts,
                       false_claims, tasks_dir, key)
    asked = [task.split(ex)[1] for ex in examples]
    field = "_".join(asked[0])  # x_u's field: cell_type, perturbation, ...
    out.obs[f"{key}_dual_{field}"] = [b or "unparsed" for b in generated.read_back]
    out.obs[f"{key}_consistent"] = [b == task.render_unknown(u) for b, u in zip(generated.read_back, asked,
                                                                                  strict=True)]
    out.obsm[f"{key}_{name}"] = target
    out.uns.setdefault(key, {})[task.name] = {
        "model": str(mdl.path), **run, "seed": seed, "unparsed": generated.unparsed, "genes_mapped": int(hit.sum()),
        **overlap, "faithfulness": checked.info,
    }
    return out


def perturb(adata: AnnData, model: CellDualityModel | str, perturbation: str, **options: Any) -> AnnData:
    """Predict each cell's response to ``perturbation`` (e.g. ``"knockout STAT1"``).

    Adds ``.obs['cellduality_perturbed_sentence' | '_reasoning' | '_dual_perturbation' | '_consistent']``
    and ``.obsm['cellduality_perturbed']``: the predicted expression on ``adata.var_names``
    (genes the model's inverse does not cover are 0). ``options``: ``batch_size``,
    ``max_new_tokens`` (256), ``min_overlap``, ``seed``, ``copy``, ``device``, ``false_claims``,
    ``tasks_dir`` and the sentence options. The generic
    :func:`~cellduality.inference.generic.predict` with ``task="perturbation"``.
    """
    from cellduality.inference.generic import predict
    from cellduality.tasks.perturbation import Perturbation

    parsed = Perturbation.parse(perturbation)  # the run records the canonical spelling
    return predict(adata, model, "perturbation", perturbation=parsed.render() if parsed else perturbation, **options)

