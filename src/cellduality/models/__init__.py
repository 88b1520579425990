"""Models: the gene-aware tokenizer, Llama presets, loading/saving and batched generation."""

from cellduality.models.generation import make_generate_fn
from cellduality.models.loading import (
    INFO_FILE,
    PROMPT_SEPARATOR,
    apply_lora,
    default_dtype,
    format_prompt,
    load_model,
    lora_config,
    read_model_info,
    save_cellduality_model,
)
from cellduality.models.presets import PRESETS, Preset, build_model, count_parameters
from cellduality.models.tokenizer import SPECIAL_TOKENS, TAGS, build_tokenizer

__all__ = [
    "INFO_FILE",
    "PRESETS",
    "PROMPT_SEPARATOR",
    "SPECIAL_TOKENS",
    "TAGS",
    "Preset",
    "apply_lora",
    "build_model",
    "build_tokenizer",
    "count_parameters",
    "default_dtype",
    "format_prompt",
    "load_model",
    "lora_config",
    "make_generate_fn",
    "read_model_info",
    "save_cellduality_model",
]
