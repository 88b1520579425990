"""Batched generation as a plain ``Callable[[list[str]], list[str]]``.

The duality reward (inside GRPO), evaluation and inference all need "prompts in, completion texts
out". :func:`make_generate_fn` wraps a Hugging Face model that way: prompts are formatted with
:func:`~cellduality.models.loading.format_prompt` (the same convention as training), left-padded,
generated with the KV cache in batches, and only the new text is returned. The model is switched
to ``eval()`` under ``torch.no_grad()`` and put back in its previous mode, so calling it from
inside a training step (GRPO rewards) does not disturb training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cellduality.models.loading import format_prompt

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def make_generate_fn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
) -> Callable[[list[str]], list[str]]:
    """Return ``generate(prompts) -> completions`` for raw task prompts.

    With ``seed`` set, call ``i`` samples with seed ``seed + i`` inside a forked RNG: runs are
    reproducible and the caller's random state is untouched.
    """
    import torch
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, use_cache=True, **sampling)
    calls = 0

    def generate(prompts: list[str]) -> list[str]:
        nonlocal calls
        if not prompts:
            return []
        texts = [format_prompt(tokenizer, p) for p in prompts]
        device = next(model.parameters()).device
        was_training = model.training
        side = tokenizer.padding_side
        outputs: list[str] = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed + calls)
            calls += 1
            try:
                model.eval()
                tokenizer.padding_side = "left"
                with torch.no_grad():
                    for start in range(0, len(texts), batch_size):
                        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
                        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                        out = model.generate(**batch, generation_config=config)
                        new = out[:, batch["input_ids"].shape[1] :]
                        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            finally:
                tokenizer.padding_side = side
                model.train(was_training)
        return outputs

    return generate
