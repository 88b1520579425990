"""Dual generations from the *live* policy, for the duality reward (paper §3.4.1).

The duality reward asks the policy being trained to answer the dual task on its own primal
outputs. Inside a GRPO step the policy is wrapped by accelerate (DDP / DeepSpeed), in train mode
and with gradients on; these generators unwrap it (ZeRO-3 parameters gathered by TRL's own
``unwrap_model_for_generation``), switch it to ``eval()`` under ``torch.no_grad()``, run **one**
batched, KV-cached ``generate`` call for all dual prompts of a reward call, and restore the
training mode -- even if generation fails.

With ``use_vllm`` the dual prompts go through the same vLLM engine as the rollouts instead
(colocate: the in-process ``LLM``; server: the ``VLLMClient`` of ``trl vllm-serve``), whose
weights TRL has already synced to the current policy at the start of the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

GenerateFn = Callable[[list[str]], list[str]]
FormatFn = Callable[[Any, str], str]


def policy_generate_fn(
    trainer: Any,
    tokenizer: Any,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    format_prompt: FormatFn | None = None,
    genes: Iterable[str] | None = None,
) -> GenerateFn:
    """A ``generate(prompts) -> texts`` backed by ``trainer``'s current policy.

    ``genes`` (transformers path) keeps a gene from repeating inside a dual answer, exactly as
    evaluation and inference decode (:class:`cellduality.models.generation.UniqueAnswerGenes`).

    Routes through vLLM when the trainer uses it, else through ``model.generate``.
    ``temperature == 0`` means greedy decoding (the dual answer is then a deterministic function
    of the primal answer, which keeps the reward's noise down).
    """
    fmt = format_prompt or (lambda _tok, prompt: prompt)
    if getattr(trainer, "use_vllm", False):
        engine = trainer.vllm_generation
        if trainer.args.vllm_mode == "colocate":
            fn = vllm_colocate_generate_fn(engine.llm, tokenizer, max_new_tokens=max_new_tokens,
                                           temperature=temperature, format_prompt=fmt)
        else:
            fn = vllm_server_generate_fn(engine, trainer.accelerator, tokenizer, max_new_tokens=max_new_tokens,
                                         temperature=temperature, format_prompt=fmt)
    else:
        fn = transformers_generate_fn(trainer, tokenizer, max_new_tokens=max_new_tokens,
                                      temperature=temperature, format_prompt=fmt, genes=genes)
    return unique_prompts(fn) if temperature == 0 else fn


def unique_prompts(generate: GenerateFn) -> GenerateFn:
    """Generate each distinct prompt once (greedy decoding gives equal prompts equal answers).

    Within a GRPO group the G primal answers of a classification prompt often name the same
    label, so their dual prompts coincide; deduplicating them cuts the dual pass by up to G x.
    """

    def generate_unique(prompts: list[str]) -> list[str]:
        distinct = list(dict.fromkeys(prompts))
        answers = dict(zip(distinct, generate(distinct), strict=True))
        return [answers[p] for p in prompts]

    return generate_unique


def _prompt_ids(tokenizer: Any, prompts: Sequence[str], fmt: FormatFn) -> list[list[int]]:
    # Same tokenisation as TRL's rollouts of plain-text prompts: ``tokenizer(text=...)``.
    return [list(ids) for ids in tokenizer(text=[fmt(tokenizer, p) for p in prompts])["input_ids"]]


def _decode(tokenizer: Any, completion_ids: Sequence[Sequence[int]]) -> list[str]:
    # Same decoding as TRL's rollouts (special tokens dropped), so the dual parser sees what the
    # primal parser sees.
    return tokenizer.batch_decode([list(ids) for ids in completion_ids], skip_special_tokens=True)


def transformers_generate_fn(
    trainer: Any, tokenizer: Any, *, max_new_tokens: int, temperature: float, format_prompt: FormatFn,
    genes: Iterable[str] | None = None,
) -> GenerateFn:
    """``model.generate`` on the unwrapped policy: one KV-cached batch per call, in eval mode,
    without gradients, training mode restored (:func:`cellduality.models.make_generate_fn`)."""

    def generate(prompts: list[str]) -> list[str]:
        from trl.models import unwrap_model_for_generation

        from cellduality.models import make_generate_fn

        if not prompts:
            return []
        gather = getattr(trainer.args, "ds3_gather_for_generation", True)
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=gather) as model:
            fn = make_generate_fn(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                  temperature=temperature if temperature > 0 else 1.0, batch_size=len(prompts),
                                  genes=genes)
            return fn(prompts)

    return generate


def policy_score_fn(trainer: Any, tokenizer: Any, *, max_tokens_per_batch: int = 16384) -> Callable[..., list]:
    """Teacher-forced ``score(prompts, targets)`` on the trainer's current policy (likelihood rewards).

    One forward pass over length-sorted, padded batches (:func:`cellduality.models.scoring.score_continuations`)
    on the unwrapped policy -- also when rollouts come from vLLM, whose engine cannot score a given
    text cheaply, while the training copy of the weights is current by definition. ZeRO-3
    parameters are gathered by TRL's ``unwrap_model_for_generation``.
    """

    def score(prompts: Sequence[str], targets: Sequence[str]) -> list:
        from trl.models import unwrap_model_for_generation

        from cellduality.models.scoring import score_continuations

        if not prompts:
            return []
        gather = getattr(trainer.args, "ds3_gather_for_generation", True)
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=gather) as model:
            return score_continuations(model, tokenizer, prompts, targets, max_tokens_per_batch=max_tokens_per_batch)

    return score


def vllm_colocate_generate_fn(
    llm: Any, tokenizer: Any, *, max_new_tokens: int, temperature: float, format_prompt: FormatFn
) -> GenerateFn:
    """Dual generations through the colocated vLLM ``LLM`` that also produced the rollouts."""

    def generate(prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        from vllm import SamplingParams

        params = SamplingParams(n=1, temperature=temperature, max_tokens=max_new_tokens)
        requests = [{"prompt_token_ids": ids} for ids in _prompt_ids(tokenizer, prompts, format_prompt)]
        outputs = llm.generate(requests, sampling_params=params, use_tqdm=False)
        return _decode(tokenizer, [output.outputs[0].token_ids for output in outputs])

    return generate


def vllm_server_generate_fn(
    engine: Any, accelerator: Any, tokenizer: Any, *, max_new_tokens: int, temperature: float,
    format_prompt: FormatFn,
) -> GenerateFn:
    """Dual generations through the ``trl vllm-serve`` server that also produced the rollouts.

    Only the main process holds the client (as in TRL's rollouts): every process's dual prompts
    are gathered, generated in one request, broadcast back and sliced per process. All processes
    call the reward in lock-step inside a GRPO step, so the collectives line up.
    """

    def generate(prompts: list[str]) -> list[str]:
        from accelerate.utils import broadcast_object_list, gather_object

        ids = _prompt_ids(tokenizer, prompts, format_prompt)
        counts = gather_object([len(ids)])
        all_ids = gather_object(ids)
        payload: list[Any] = [None]
        if accelerator.is_main_process:
            out = engine.vllm_client.generate(prompts=all_ids, n=1, temperature=temperature,
                                              max_tokens=max_new_tokens) if all_ids else {"completion_ids": []}
            payload = [out["completion_ids"]]
        broadcast_object_list(payload, from_process=0)
        start = sum(counts[: accelerator.process_index])
        return _decode(tokenizer, payload[0][start:start + len(ids)])

    return generate
