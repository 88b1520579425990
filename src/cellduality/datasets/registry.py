"""What each dataset is: the paper's eleven benchmarks and the sets that work offline.

A :class:`DatasetSpec` carries what a user must know to turn a dataset into cell sentences and
tasks: citation, accession, species, label columns, the task theme and its in-/out-of-
distribution role in the paper (§4), and the recommended keys for ``build_cell_sentences``.
Benchmarks carry ``url``/``sha256`` only where a direct, checksummed file is known; for the
others :func:`cellduality.datasets.download.fetch` says where to get the data by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cellduality.errors import CellDualityError


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset and the keys that turn it into cell sentences."""

    name: str
    citation: str
    accession: str
    species: str
    theme: str  # "cell identity" or "cell dynamics"
    role: str  # e.g. "ID train+test", "OOD test"
    label_columns: tuple[str, ...] = ()
    perturbation_key: str | None = None
    control_value: str | None = None
    group_key: str | None = None
    drug_key: str | None = None
    gene_map: str | None = None  # relative to the shared data folder, for the offline sets
    use_raw: bool | None = None
    drop: dict[str, tuple[str, ...]] = field(default_factory=dict)  # obs column -> values to drop
    path: str | None = None  # relative path of the offline file in the shared data folder
    url: str | None = None
    sha256: str | None = None
    filename: str | None = None
    notes: str = ""

    @property
    def label_key(self) -> str | None:
        return self.label_columns[0] if self.label_columns else None

    def defaults(self) -> dict:
        """The recommended ``build_cell_sentences`` keys (``gene_map`` resolved by the loader)."""
        return {"label_key": self.label_key, "perturbation_key": self.perturbation_key,
                "control_value": self.control_value, "group_key": self.group_key,
                "drug_key": self.drug_key, "gene_map": self.gene_map, "use_raw": self.use_raw}

    def to_dict(self) -> dict:
        return asdict(self)


_IDENTITY, _DYNAMICS = "cell identity", "cell dynamics"

#: The paper's benchmarks (§4 "Tasks and Datasets"): no direct checksummed download is known for
#: these processed files, so url/sha256 are None and `fetch` explains the manual route.
BENCHMARKS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("He-2020-Liver", "He S. et al. 2020, Genome Biology 21:294", "GEO GSE159929", "human",
                _IDENTITY, "ID train+test (annotation)", ("cell_type",)),
    DatasetSpec("Segerstolpe-2016", "Segerstolpe A. et al. 2016, Cell Metabolism 24:593", "ArrayExpress E-MTAB-5061",
                "human", _IDENTITY, "ID train+test (annotation)", ("cell_type",)),
    DatasetSpec("Xin-2016", "Xin Y. et al. 2016, Cell Metabolism 24:608", "GEO GSE81608", "human",
                _IDENTITY, "ID train+test (annotation)", ("cell_type",)),
    DatasetSpec("Human-Immune-Tissue", "Dominguez Conde C. et al. 2022, Science 376:eabl5197",
                "Cross-tissue Immune Cell Atlas (tissueimmunecellatlas.org)", "human",
                _IDENTITY, "ID train+test (generation)", ("cell_type",)),
    DatasetSpec("Ma-2020", "Ma S. et al. 2020, Cell 183:1103 (SHARE-seq)", "GEO GSE140203", "mouse",
                _IDENTITY, "OOD test (annotation)", ("cell_type",)),
    DatasetSpec("Bastidas-Ponce-2019", "Bastidas-Ponce A. et al. 2019, Development 146:dev173849",
                "GEO GSE132188", "mouse", _IDENTITY, "OOD test (annotation)", ("cell_type",)),
    DatasetSpec("L1000", "Subramanian A. et al. 2017, Cell 171:1437", "GEO GSE92742", "human",
                _DYNAMICS, "train (perturbation response, bulk)", (), perturbation_key="pert_iname",
                drug_key="pert_iname", notes="bulk L1000 profiles (978 landmark genes)"),
    DatasetSpec("GSE149383", "Aissa A.F. et al. 2021, Nature Communications 12:1628", "GEO GSE149383",
                "human", _DYNAMICS, "ID train+test (drug sensitivity, lung)", ("sensitivity",), drug_key="drug"),
    DatasetSpec("GSE117872", "Sharma A. et al. 2018, Nature Communications 9:4931", "GEO GSE117872",
                "human", _DYNAMICS, "ID train+test (drug sensitivity, oral cavity)", ("sensitivity",),
                drug_key="drug"),
    DatasetSpec("GSE110894", "Bell C.C. et al. 2019, Nature Communications 10:2723", "GEO GSE110894",
                "mouse", _DYNAMICS, "OOD test (drug sensitivity, cross-species bone marrow)", ("sensitivity",),
                drug_key="drug"),
    DatasetSpec("sci-Plex3", "Srivatsan S.R. et al. 2020, Science 367:45", "GEO GSE139944 (sciPlex3)", "human",
                _DYNAMICS, "OOD test (perturbation response generation)", ("cell_type",),
                perturbation_key="product_name", control_value="Vehicle", group_key="cell_type",
                drug_key="product_name"),
]}

#: Data that works offline: scanpy's bundled file and the sets in the shared data folder.
OFFLINE: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("pbmc68k_reduced", "Zheng G.X.Y. et al. 2017, Nature Communications 8:14049 (scanpy subset)",
                "bundled with scanpy", "human", _IDENTITY, "embedded default", ("bulk_labels",), use_raw=True,
                notes=".X is scaled: ranked on .raw (log-normalised)"),
    DatasetSpec("kang2018", "Kang H.M. et al. 2018, Nature Biotechnology 36:89 (scGen validation split)",
                "GEO GSE96583", "human", _DYNAMICS, "offline (IFN-beta stimulation)", ("cell_type",),
                perturbation_key="condition", control_value="control", group_key="cell_type",
                path="kang2018_pbmc_ifnb_scgen/kang2018_scgen_valid.h5ad"),
    DatasetSpec("papalexi2021", "Papalexi E. et al. 2021, Nature Genetics 53:322 (sceptre subset)",
                "GEO GSE153056", "human", _DYNAMICS, "offline (CRISPR knockout)", (),
                perturbation_key="perturbation", control_value="non-targeting", group_key="bio_rep",
                drop={"perturbation": ("unassigned",)},
                path="papalexi2021_thp1_eccite_sceptre/papalexi2021_thp1_lowmoi_299genes.h5ad"),
    DatasetSpec("a375_plx4720", "Ho Y.-J. et al. 2018, Genome Research 28:1353 (SCAD target set)",
                "GEO GSE108383", "human", _DYNAMICS, "offline (drug sensitivity)", ("sensitivity",),
                drug_key="drug", gene_map="gene_id_maps/human_ensembl_symbol_entrez_pathlinkR.tsv",
                path="ho2018_a375_plx4720_scad/a375_plx4720_target.h5ad",
                notes="z-scored values, Entrez ids mapped to symbols"),
    DatasetSpec("baron2016", "Baron M. et al. 2016, Cell Systems 3:346 (CIDER subset)", "GEO GSE84133",
                "human+mouse", _IDENTITY, "offline (annotation)", ("Group",),
                path="baron2016_pancreas_cider/baron_pancreas_350cells.h5ad"),
    DatasetSpec("he2020_liver", "He S. et al. 2020, Genome Biology 21:294 (InstructCell demo)", "GEO GSE159929",
                "human", _IDENTITY, "offline (annotation, 20 cells)", ("cell_type",),
                path="he2020_liver_instructcell_demo/rna.h5ad"),
    DatasetSpec("tirosh2016", "Tirosh I. et al. 2016, Nature 539:309 (infercnvpy subset)", "GEO GSE70630",
                "human", _IDENTITY, "offline (annotation, TPM-like)", ("cell_type",),
                path="tirosh2016_oligodendroglioma_infercnvpy/oligodendroglioma.h5ad"),
]}

_ALIASES = {"pbmc68k": "pbmc68k_reduced", "kang": "kang2018", "papalexi": "papalexi2021",
            "a375": "a375_plx4720", "ho2018": "a375_plx4720", "baron": "baron2016", "tirosh": "tirosh2016",
            "he2020": "he2020_liver"}


def get_spec(name: str) -> DatasetSpec:
    """A benchmark or offline dataset by name (case-insensitive, a few short aliases)."""
    key = _ALIASES.get(name.lower(), name)
    for table in (OFFLINE, BENCHMARKS):
        for spec_name, spec in table.items():
            if spec_name.lower() == key.lower():
                return spec
    known = ", ".join([*OFFLINE, *BENCHMARKS])
    raise CellDualityError(f"unknown dataset '{name}'; known: {known}.")
