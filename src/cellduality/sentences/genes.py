"""Gene identifiers -> upper-case gene symbols (the words of a cell sentence).

Symbols are upper-cased so mouse (``Actb``) and human (``ACTB``) genes share words. Ensembl or
Entrez ids are mapped through a ``var`` column (``gene_id_column``) or a mapping table (any
CSV/TSV path; the id and symbol columns are found from the data); mouse genes can be mapped to
human orthologs with a second table. Ids that are not symbols and have no mapping are refused
with a one-line error instead of becoming nonsense words.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellduality.errors import InputDataError

log = logging.getLogger(__name__)

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)
_ENTREZ = re.compile(r"^(entrez[:_])?\d+$", re.IGNORECASE)
_SYMBOL_COLUMNS = ("symbol", "gene_symbol", "hgncsymbol", "hgnc_symbol", "gene_name", "genename",
                   "name", "human_gene_sym", "human gene name")


def id_kind(ids: list[str]) -> str:
    """``"ensembl"``, ``"entrez"`` or ``"symbol"``: what most of ``ids`` look like."""
    if not ids:
        return "symbol"
    sample = ids if len(ids) <= 2000 else [ids[i] for i in np.linspace(0, len(ids) - 1, 2000).astype(int)]
    for kind, pattern in (("ensembl", _ENSEMBL), ("entrez", _ENTREZ)):
        if sum(bool(pattern.match(s)) for s in sample) > 0.5 * len(sample):
            return kind
    return "symbol"


def clean_id(value: str) -> str:
    """Canonical form of an id for table look-ups: no ``entrez:`` prefix, no Ensembl version."""
    text = str(value).strip()
    text = re.sub(r"^entrez[:_]", "", text, flags=re.IGNORECASE)
    if _ENSEMBL.match(text):
        text = text.split(".")[0].upper()
    return text


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(f"gene mapping table {path} does not exist; pass a CSV/TSV path.")
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    sep = "\t" if first.count("\t") >= max(1, first.count(",")) else ","
    table = pd.read_csv(path, sep=sep, dtype=str, header=None, keep_default_na=False)
    if table.shape[1] < 2:
        raise InputDataError(f"gene mapping table {path} needs at least two columns (id, symbol).")
    return table


def read_mapping(path: str | Path, ids: list[str], target: str | None = None) -> dict[str, str]:
    """Map ``ids`` to symbols with the table at ``path``.

    The id column is the one that contains most of ``ids``; the symbol column is the one whose
    header names a symbol (``hgncSymbol``, ``HUMAN_GENE_SYM``, ``Human gene name``, ...) or else
    the first other column. ``target`` forces the symbol column by header name.
    """
    path = Path(path)
    table = _read_table(path)
    header = [str(v).strip() for v in table.iloc[0]]
    wanted = {clean_id(i) for i in ids} | set(ids)
    hits = [int(table[c].map(clean_id).isin(wanted).sum()) for c in table.columns]
    id_col = int(np.argmax(hits))
    if hits[id_col] == 0:
        raise InputDataError(f"none of the gene ids (e.g. {ids[0]}) occur in {path}; is it the right table?")
    names = [h.lower() for h in header]
    if target is not None:
        if target.lower() not in names:
            raise InputDataError(f"column '{target}' not in {path} (columns: {', '.join(header)}).")
        sym_col = names.index(target.lower())
    else:
        preferred = [i for i, n in enumerate(names) if n in _SYMBOL_COLUMNS and i != id_col]
        others = [i for i in range(len(names)) if i != id_col]
        sym_col = (preferred or others)[0]
    keys = table.iloc[:, id_col].map(clean_id)
    values = table.iloc[:, sym_col].str.strip()
    usable = (values != "") & (keys != "")
    mapping: dict[str, str] = {}
    for key, value in zip(keys[usable], values[usable], strict=True):
        mapping.setdefault(key, value)  # first row wins: deterministic for many-to-one tables
    return mapping


@dataclass
class GeneSymbols:
    """Symbols for the matrix columns; ``keep`` selects the columns that got a (unique) symbol."""

    symbols: list[str]
    keep: np.ndarray
    notes: list[str] = field(default_factory=list)


def resolve_symbols(var_names: list[str], var: pd.DataFrame | None = None, *,
                    gene_id_column: str | None = None, gene_map: str | Path | None = None,
                    orthologs: str | Path | None = None) -> GeneSymbols:
    """Upper-case symbols for ``var_names``, mapping ids and mouse genes when asked.

    Columns without a symbol, and repeats of a symbol already used, are dropped (``keep``);
    ``notes`` says how many, for the log and the metadata.
    """
    notes: list[str] = []
    if gene_id_column is not None:
        if var is None or gene_id_column not in var.columns:
            available = ", ".join(map(str, getattr(var, "columns", []))) or "none"
            raise InputDataError(f"--gene-id-column '{gene_id_column}' is not a var column (available: {available}).")
        names = ["" if pd.isna(v) else str(v) for v in var[gene_id_column]]
    else:
        names = [str(v) for v in var_names]
    kind = id_kind(names)
    if kind != "symbol":
        if gene_map is None:
            example = names[0] if names else "?"
            raise InputDataError(
                f"gene ids look like {kind} ids (e.g. {example}), not symbols; pass --gene-map PATH "
                "(a table id -> symbol) or --gene-id-column COL (a var column with symbols).")
        mapping = read_mapping(gene_map, names)
        names = [mapping.get(clean_id(n), "") for n in names]
        notes.append(f"mapped {kind} ids to symbols with {Path(gene_map).name}: "
                     f"{sum(bool(n) for n in names)}/{len(names)} mapped")
    elif gene_map is not None:
        mapping = read_mapping(gene_map, names)
        names = [mapping.get(clean_id(n), n) for n in names]
        notes.append(f"renamed genes with {Path(gene_map).name}")
    if orthologs is not None:
        mapping = read_mapping(orthologs, names)
        mapped = [mapping.get(n, "") for n in names]
        notes.append(f"mouse -> human orthologs with {Path(orthologs).name}: "
                     f"{sum(bool(n) for n in mapped)}/{len(names)} mapped")
        names = mapped
    symbols = ["".join(n.split()).upper() for n in names]
    seen: set[str] = set()
    keep = np.zeros(len(symbols), dtype=bool)
    for i, s in enumerate(symbols):
        if s and s not in seen:
            seen.add(s)
            keep[i] = True
    missing = sum(1 for s in symbols if not s)
    duplicates = len(symbols) - missing - int(keep.sum())
    if missing:
        notes.append(f"dropped {missing} genes without a symbol")
    if duplicates:
        notes.append(f"dropped {duplicates} duplicate gene symbols (kept the first occurrence)")
        log.warning("cell sentences: %d duplicate gene names; kept the first occurrence of each.", duplicates)
    if not keep.any():
        raise InputDataError("no gene has a usable symbol; check --gene-map / --gene-id-column.")
    return GeneSymbols(symbols, keep, notes)
