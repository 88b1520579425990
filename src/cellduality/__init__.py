"""CellDuality: teach language models to reason about single cells.

The package follows the data flow of the method (paper §3):

``sentences``  AnnData -> cell sentences (and back, through an inverse model)
``datasets``   registry of the paper's benchmarks, offline loaders, splits, control pairing
``tasks``      the four primal/dual task pairs (Definition 3.1 as one protocol) and data builders
``rewards``    RWJS, the duality reward (uses the live policy) and the ground-truth reward (the oracle baseline's)
``teacher``    chain-of-thought teachers (offline knowledge-grounded, OpenAI-compatible) and filtering
``models``     gene-aware tokenizer, small Llama presets, loading HF models / LoRA adapters
``training``   thin, configured wrappers around TRL's SFTTrainer and GRPOTrainer
``evaluation`` the paper's metrics, classical baselines, tables and plots
``inference``  annotate / sensitivity / generate / perturb on a user's AnnData
``pipeline``   the one-command quickstart
``adaptation`` label-free adaptation of a trained model to a user's own cells (``cd.tl.adapt``)
``cli``        the ``cellduality`` command

Heavy modules (torch, transformers, trl) are imported lazily so that ``import cellduality``
and light CLI commands stay fast.
"""

from cellduality import tl
from cellduality.errors import CellDualityError

__version__ = "0.1.0"

__all__ = ["CellDualityError", "__version__", "tl"]
