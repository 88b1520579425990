"""Load any causal LM (a local HF folder or a preset built here) and save CellDuality models.

A CellDuality model folder is a standard Hugging Face folder (``config.json``,
``model.safetensors``, tokenizer files, ``generation_config.json``) that ``transformers`` and vLLM
load as is, plus ``cellduality.json`` (tasks, stage, lineage), a model card ``README.md`` and the ``inverse.json`` /
``vocabulary.json`` of its training data, so inference can rebuild the tasks and turn generated
sentences back into expression. ``cellduality.json`` is written last: its presence means the
folder is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellduality.errors import ModelError
from cellduality.models.card import write_model_card
from cellduality.models.presets import PRESETS, build_model
from cellduality.models.tokenizer import build_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

INFO_FILE = "cellduality.json"
LINEAGE_FILES = ("inverse.json", "vocabulary.json")
MODEL_FORMAT = "cellduality.model/1"

PROMPT_SEPARATOR = "\n### Response:\n"
"""Ends every prompt of a tokenizer without chat template: the completion starts on a token boundary."""

DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The exact text a model sees before its completion (shared by SFT, GRPO and inference).

    With a chat template: the user turn plus the generation prompt (``add_generation_prompt``),
    minus a leading BOS string when the tokenizer adds BOS itself (no double BOS). Without: the
    prompt followed by :data:`PROMPT_SEPARATOR`.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        bos = tokenizer.bos_token
        if bos and text.startswith(bos) and _adds_bos(tokenizer):
            text = text[len(bos) :]
        return text
    return prompt + PROMPT_SEPARATOR


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def default_dtype(device: str | None = None) -> torch.dtype:
    """The dtype for a model that will live on ``device`` (``None``: where it was built, the CPU).

    float32 on the CPU (bf16 matmuls are ~500x slower there, STACK.md); bf16 on a GPU that has it.
    Keyed on the *target* device, not on whether the machine has a GPU: a model left on the CPU of
    a GPU machine in bf16 computed hundreds of times slower.
    """
    import torch

    on_cuda = device is not None and str(device).startswith("cuda") and torch.cuda.is_available()
    if on_cuda and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def inference_device() -> str | None:
    """``"cuda"`` when a GPU is present, else ``None`` (CPU): where evaluation, diagnostics and
    inference run a model themselves (trainers place it per process on their own)."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


def load_model(
    path_or_preset: str | os.PathLike[str],
    *,
    tokenizer_texts: Iterable[str] | None = None,
    genes: Iterable[str] | None = None,
    lora: bool | dict[str, Any] = False,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` for a preset name or a local Hugging Face folder.

    A preset builds a fresh model and trains the gene-aware tokenizer on ``tokenizer_texts`` +
    ``genes`` (both required). A folder is loaded with safetensors only and, unless asked,
    without remote code. ``lora`` (``True`` or LoRA keyword overrides) wraps the model with PEFT.
    """
    import torch

    name = str(path_or_preset)
    if name in PRESETS:
        if tokenizer_texts is None:
            raise ModelError(f"Preset '{name}' needs training texts to build its tokenizer; pass tokenizer_texts.")
        tokenizer = build_tokenizer(tokenizer_texts, genes or ())
        model = build_model(name, tokenizer, seed=seed)
    else:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json"
            raise ModelError(
                f"Model '{name}' {what}; pass a preset ({', '.join(PRESETS)}) or a local Hugging Face model folder."
            )
        model, tokenizer = _load_folder(path, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    target = dtype if dtype is not None else default_dtype(device)
    if isinstance(target, str):
        target = getattr(torch, target)
    model = model.to(dtype=target)
    if device is not None:
        model = model.to(device)
    if lora:
        model = apply_lora(model, lora if isinstance(lora, dict) else None)
    return model, tokenizer


def _load_folder(path: Path, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any(path.glob("*.safetensors")):
        raise ModelError(f"Model folder {path} has no .safetensors weights; convert it (only safetensors are loaded).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code, dtype="auto"
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"Cannot load model folder {path}: {first}") from None
    return model, tokenizer


def lora_config(overrides: dict[str, Any] | None = None):
    """A PEFT ``LoraConfig`` for causal LMs (defaults in :data:`DEFAULT_LORA`)."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **{**DEFAULT_LORA, **(overrides or {})})


def apply_lora(model: PreTrainedModel, overrides: dict[str, Any] | None = None):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(overrides))


# --------------------------------------------------------------------------------------------
# CellDuality model folders
# --------------------------------------------------------------------------------------------


def save_cellduality_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    info: dict[str, Any],
    lineage_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a complete CellDuality model folder into ``out_dir`` without ever leaving half of one.

    Files are written to a temporary folder inside ``out_dir`` and moved in one by one;
    ``cellduality.json`` (the completeness marker) goes last. The model card ``README.md``
    (:mod:`cellduality.models.card`) is written with them. LoRA adapters are merged first so
    the result is a plain model any loader understands. Other content of ``out_dir`` (e.g.
    ``checkpoints/``) is left alone.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tasks: Any = None
    if lineage_dir is not None and (Path(lineage_dir) / "tasks.json").is_file():
        tasks = json.loads((Path(lineage_dir) / "tasks.json").read_text())
    meta = {
        "format": MODEL_FORMAT,
        "tasks": tasks,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **info,
    }
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=out))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in LINEAGE_FILES:
            src = Path(lineage_dir) / name if lineage_dir is not None else None
            if src is not None and src.is_file():
                shutil.copyfile(src, tmp / name)
        write_model_card(tmp, meta, tokenizer=tokenizer, data_dir=lineage_dir, name=out.name)
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
        _write_json_atomic(out / INFO_FILE, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_model_info(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``cellduality.json`` of a model folder; :class:`ModelError` when it is not a CellDuality model."""
    path = Path(model_dir)
    info = path / INFO_FILE
    if not path.is_dir():
        raise ModelError(f"Model folder {path} does not exist; train one with `cellduality sft`.")
    if not info.is_file():
        raise ModelError(
            f"{path} is not a CellDuality model (no {INFO_FILE}); train one with `cellduality sft` "
            "or point to a folder it wrote."
        )
    try:
        return json.loads(info.read_text())
    except json.JSONDecodeError:
        raise ModelError(f"{info} is corrupt (not JSON); re-run the command that wrote {path}.") from None


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
