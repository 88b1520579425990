"""Llama-architecture presets built locally (no hub download): from test-sized to GPU-sized.

Sizes are chosen for the compute they target: ``tiny`` makes a test step take milliseconds,
``small`` is the ~25M model that trains at a useful speed on a 2-core CPU (STACK.md), ``base`` and
up are meant for GPUs. Parameter counts depend on the vocabulary (embeddings are tied);
:func:`count_parameters` reports the real figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from cellduality.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Preset:
    """The shape of a locally built Llama model."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 2048
    description: str = ""


PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 2, 4, 352, description="~1M params + embeddings; unit tests"),
    "mini": Preset(256, 4, 4, 688, description="~3M params + embeddings; quick CPU experiments"),
    "small": Preset(512, 6, 8, 1376, description="~19M params + embeddings (~25M total); CPU default"),
    "base": Preset(768, 12, 12, 2048, description="~85M params + embeddings; one GPU"),
    "large": Preset(1024, 16, 16, 2816, num_key_value_heads=8, description="~190M params + embeddings; GPU"),
    "xl": Preset(2048, 16, 32, 5632, num_key_value_heads=8, description="~1B params; multi-GPU"),
}


def preset_config(name: str, tokenizer: PreTrainedTokenizerBase):
    """The ``transformers.LlamaConfig`` of preset ``name`` sized to ``tokenizer``."""
    from transformers import LlamaConfig

    if name not in PRESETS:
        raise ModelError(f"Unknown model preset '{name}'; choose one of: {', '.join(PRESETS)} or pass a model folder.")
    shape = asdict(PRESETS[name])
    shape.pop("description")
    if shape["num_key_value_heads"] is None:
        shape["num_key_value_heads"] = shape["num_attention_heads"]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        **shape,
    )


def build_model(preset: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised float32 ``LlamaForCausalLM`` of shape ``preset`` (deterministic in ``seed``)."""
    import torch
    from transformers import LlamaForCausalLM

    config = preset_config(preset, tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters; tied embeddings count once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
