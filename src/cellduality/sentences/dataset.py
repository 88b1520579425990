"""AnnData -> a saved cell-sentence folder (architecture.md §1) and back.

``build_cell_sentences`` chooses the input, maps gene ids, drops empty cells, ranks once (all
nonzero genes, so the inverse model sees every rank), truncates to top-K for the sentences,
splits the cells, fits the inverse on the training cells and measures it on held-out cells.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellduality.datasets.splits import pair_controls, stratified_split
from cellduality.errors import CellDualityError, InputDataError
from cellduality.sentences.genes import resolve_symbols
from cellduality.sentences.inverse import InverseModel, fidelity, ranked_observations
from cellduality.sentences.normalize import choose_input, normalised_expression
from cellduality.sentences.ranking import SentenceJoiner, rank_csr

log = logging.getLogger(__name__)

FORMAT = "cellduality.sentences/1"
META_FILE, VOCAB_FILE, INVERSE_FILE, SPLITS_FILE = "cellduality.json", "vocabulary.json", "inverse.json", "splits.json"


def truncate(indptr: np.ndarray, genes: np.ndarray, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``top_k`` ranked genes of every row (no re-sort needed)."""
    if top_k is None:
        return indptr, genes
    counts = np.diff(indptr)
    keep = (np.arange(genes.size) - np.repeat(indptr[:-1], counts)) < top_k
    new_indptr = np.zeros_like(indptr)
    np.cumsum(np.minimum(counts, top_k), out=new_indptr[1:])
    return new_indptr, genes[keep]


class CellSentenceDataset:
    """Cell sentences with their metadata, vocabulary, inverse model and splits."""

    def __init__(self, dataset, meta: dict, vocabulary: dict[str, int], inverse: InverseModel | None,
                 splits: dict[str, np.ndarray]) -> None:
        self.dataset = dataset
        self.meta = meta
        self.vocabulary = vocabulary
        self.inverse = inverse
        self.splits = {k: np.asarray(v, dtype=np.int64) for k, v in splits.items() if k in ("train", "test")}
        #: for perturbation data: row of a seeded random control of the same group *in the same split*
        #: for each perturbed cell, -1 for controls (None without perturbation_key/control_value)
        controls = splits.get("controls")
        self.controls = None if controls is None else np.asarray(controls, dtype=np.int64)
        self._sentences: list[str] | None = None
        self._obs: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def sentences(self) -> list[str]:
        if self._sentences is None:
            self._sentences = list(self.dataset["cell_sentence"])
        return self._sentences

    def genes(self, i: int) -> list[str]:
        """The ranked gene symbols of cell ``i`` (most expressed first)."""
        return self.sentences[i].split()

    @property
    def obs(self) -> pd.DataFrame:
        """The kept ``.obs`` columns (as str), indexed by ``cell_id``."""
        if self._obs is None:
            columns = [c for c in self.dataset.column_names if c not in ("cell_id", "cell_sentence")]
            frame = self.dataset.select_columns(["cell_id", *columns]).to_pandas()
            self._obs = frame.set_index("cell_id")
        return self._obs

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write the folder atomically (temp sibling renamed into place); never replaces a folder it did not write."""
        from cellduality.outputs import atomic_dir

        out_dir = Path(out_dir)
        with atomic_dir(out_dir, "sentences") as tmp:
            import datasets

            bars = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()
            try:
                self.dataset.save_to_disk(str(tmp / "data"))
            finally:
                if bars:
                    datasets.enable_progress_bars()
            for item in (tmp / "data").iterdir():  # the HF files sit at the folder's top level
                item.rename(tmp / item.name)
            (tmp / "data").rmdir()
            (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
            (tmp / VOCAB_FILE).write_text(json.dumps(self.vocabulary))
            (tmp / SPLITS_FILE).write_text(json.dumps({
                "train": self.splits["train"].tolist(), "test": self.splits["test"].tolist(),
                "seed": self.meta.get("seed"), "stratify": self.meta.get("stratify"),
                **({"controls": self.controls.tolist()} if self.controls is not None else {})}))
            if self.inverse is not None:
                self.inverse.save(tmp / INVERSE_FILE)
        return out_dir

    @classmethod
    def load(cls, directory: str | Path) -> CellSentenceDataset:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise CellDualityError(f"{directory} is not a cell-sentences folder (no {META_FILE}); "
                                   "create one with `cellduality sentences IN.h5ad OUT_DIR`.")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise CellDualityError(f"{directory} has format {meta.get('format')!r}, expected {FORMAT}.")
        import datasets

        dataset = datasets.load_from_disk(str(directory))
        vocabulary = json.loads((directory / VOCAB_FILE).read_text())
        splits = json.loads((directory / SPLITS_FILE).read_text())
        inverse = InverseModel.load(directory / INVERSE_FILE) if (directory / INVERSE_FILE).is_file() else None
        return cls(dataset, meta, vocabulary, inverse, splits)


def _check_keys(obs: pd.DataFrame, keys: dict[str, str | None]) -> None:
    for option, key in keys.items():
        if key is not None and key not in obs.columns:
            available = ", ".join(map(str, obs.columns)) or "none"
            raise InputDataError(f"{option} '{key}' is not an .obs column (available: {available}).")


def build_cell_sentences(
    adata,
    *,
    top_k: int | None = 100,
    label_keys: Sequence[str] = (),
    perturbation_key: str | None = None,
    control_value: str | None = None,
    group_key: str | None = None,
    drug_key: str | None = None,
    seed: int = 0,
    test_size: float = 0.2,
    gene_map: str | Path | None = None,
    gene_id_column: str | None = None,
    orthologs: str | Path | None = None,
    layer: str | None = None,
    use_raw: bool | None = None,
    expression: str = "auto",
    keep_obs: Sequence[str] = (),
    fidelity_cells: int = 1024,
    source: str = "",
) -> CellSentenceDataset:
    """Build cell sentences (+ vocabulary, inverse model, splits) from an AnnData."""
    import datasets

    if isinstance(label_keys, str):
        label_keys = (label_keys,)
    label_keys = list(dict.fromkeys(label_keys))
    for key in label_keys:
        _check_keys(adata.obs, {"--label-key": key})
    from cellduality.validation import check_label_column, check_markup, label_text

    for key in label_keys:
        check_label_column(adata.obs, key)
    check_markup(adata.obs, [perturbation_key], "--perturbation-key")
    check_markup(adata.obs, [drug_key], "--drug-key")
    for key in keep_obs:
        _check_keys(adata.obs, {"--keep-obs": key})
    _check_keys(adata.obs, {"--perturbation-key": perturbation_key, "--group-key": group_key,
                            "--drug-key": drug_key})
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputDataError(f"the dataset is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if perturbation_key and control_value is not None:
        values = set(adata.obs[perturbation_key].astype(str))
        if str(control_value) not in values:
            raise InputDataError(f"--control-value '{control_value}' does not occur in '{perturbation_key}' "
                                 f"(values: {', '.join(sorted(values)[:10])}).")
    if top_k is not None and top_k < 1:
        raise InputDataError(f"--top-k must be >= 1 (got {top_k}).")

    chosen = choose_input(adata, layer=layer, use_raw=use_raw, expression=expression)
    names = resolve_symbols(chosen.var_names, chosen.var, gene_id_column=gene_id_column,
                            gene_map=gene_map, orthologs=orthologs)
    matrix = chosen.matrix if names.keep.all() else chosen.matrix[:, np.flatnonzero(names.keep)]
    symbols = [s for s, k in zip(names.symbols, names.keep, strict=True) if k]
    for note in names.notes:
        log.info("cell sentences: %s", note)

    if (matrix.data == 0).any():  # copy first: the matrix may be the caller's own .X
        matrix = matrix.copy()
        matrix.eliminate_zeros()
    nonempty = np.diff(matrix.indptr) > 0
    n_dropped = int((~nonempty).sum())
    if n_dropped == matrix.shape[0]:
        raise InputDataError("every cell has zero expression in the chosen matrix; nothing to rank.")
    if n_dropped:
        log.warning("cell sentences: dropped %d all-zero cells (of %d).", n_dropped, matrix.shape[0])
        matrix = matrix[np.flatnonzero(nonempty)]
    obs = adata.obs.iloc[np.flatnonzero(nonempty)]

    indptr, genes = rank_csr(matrix, None, seed)
    sent_indptr, sent_genes = truncate(indptr, genes, top_k)
    sentences = SentenceJoiner(symbols).join(sent_indptr, sent_genes)

    stratify = label_keys[0] if label_keys else perturbation_key
    splits = stratified_split(obs[stratify].to_numpy() if stratify else None, test_size, seed, n=len(obs))

    if perturbation_key and control_value is not None:
        # pair within each split so a test cell's control is never a training cell
        controls = np.full(len(obs), -1, dtype=np.int64)
        for part in (splits["train"], splits["test"]):
            if part.size and (obs[perturbation_key].iloc[part].astype(str) == str(control_value)).any():
                local = pair_controls(obs.iloc[part], perturbation_key, str(control_value), group_key, seed)
                controls[part] = np.where(local >= 0, part[np.maximum(local, 0)], -1)
        splits = {**splits, "controls": controls}

    expr = normalised_expression(matrix, chosen.kind)
    _, rank, gene, values = ranked_observations(indptr, genes, expr, splits["train"])
    inverse = InverseModel.fit(symbols, rank, gene, values)
    held_out = splits["test"] if splits["test"].size else splits["train"]
    sample = np.random.default_rng(seed).permutation(held_out)[:fidelity_cells]
    _, rank, gene, values = ranked_observations(indptr, genes, expr, np.sort(sample))
    inverse_fidelity = {**fidelity(inverse, rank, gene, values), "n_cells": int(sample.size),
                        "cells": "test split" if splits["test"].size else "training cells (no test split)",
                        "protocol": "nonzero entries of sampled cells, all ranks, normalised expression"}

    counts = np.bincount(sent_genes, minlength=len(symbols))
    vocabulary = {symbols[i]: int(counts[i]) for i in np.flatnonzero(counts)}

    cell_ids = pd.Index(obs.index.astype(str))
    if cell_ids.has_duplicates:
        log.warning("cell sentences: duplicate cell ids; made unique with suffixes.")
        from anndata.utils import make_index_unique

        cell_ids = make_index_unique(cell_ids)
    kept = list(dict.fromkeys([*label_keys, *(k for k in (perturbation_key, group_key, drug_key) if k),
                               *keep_obs]))
    columns = {"cell_id": list(cell_ids), "cell_sentence": sentences}
    for key in kept:  # a missing label is "" (left out of labelled task splits), never a class "nan"
        columns[key] = label_text(obs[key]) if key in label_keys else obs[key].astype(str).tolist()
    dataset = datasets.Dataset.from_dict(columns)
    meta = {
        "format": FORMAT, "source": str(source), "top_k": top_k, "seed": seed, "test_size": test_size,
        "input_used": chosen.description, "input_kind": chosen.kind, "gene_notes": names.notes,
        "n_cells": len(sentences), "n_genes": len(symbols), "n_dropped_empty": n_dropped,
        "mean_sentence_length": round(float(np.diff(sent_indptr).mean()), 2),
        "label_keys": label_keys, "default_label_key": label_keys[0] if label_keys else None,
        "missing_labels": {k: int(label_text(obs[k]).count("")) for k in label_keys},
        "perturbation_key": perturbation_key, "control_value": control_value, "group_key": group_key,
        "drug_key": drug_key, "stratify": stratify, "inverse_fidelity": inverse_fidelity,
    }
    log.info("cell sentences: %d cells, inverse R2 %.3f (Cell2Sentence line %.3f) on held-out cells",
             len(sentences), inverse_fidelity["r2"], inverse_fidelity["c2s_linear"]["r2"])
    return CellSentenceDataset(dataset, meta, vocabulary, inverse, splits)
