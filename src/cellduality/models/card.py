"""The Hugging Face model card (``README.md``) of every CellDuality model folder.

A model folder is meant to be shared as is (copied, pushed to a hub, handed to a colleague), so
it says itself what it is: the base model or preset, the data and tasks it saw, the training
settings, evaluation figures once ``cellduality evaluate`` has run, and how to load it with
plain ``transformers`` and with CellDuality. ``sft`` and ``grpo`` write the card with the model
(:func:`cellduality.models.save_cellduality_model`); ``evaluate`` rewrites only the section
between :data:`EVAL_START` and :data:`EVAL_END`, so notes a user adds elsewhere survive. A
``README.md`` without those markers is the user's own and is left alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"
EVAL_START = "<!-- cellduality:evaluation -->"
EVAL_END = "<!-- /cellduality:evaluation -->"
NOT_EVALUATED = "Not evaluated yet: `cellduality evaluate MODEL_DIR TASKS_DIR OUT_DIR` writes the figures here."

_log = logging.getLogger(__name__)


def render_model_card(info: Mapping[str, Any], *, folder_name: str, chat_template: bool = False,
                      data_dir: str | os.PathLike[str] | None = None, evaluation: str = NOT_EVALUATED) -> str:
    """The card's markdown for a model whose ``cellduality.json`` is ``info``."""
    from cellduality.models.presets import PRESETS

    stage = str(info.get("stage", "model"))
    base = str(info.get("base_model") or "unknown")
    tasks_json = info.get("tasks") or {}
    tasks = tasks_json.get("tasks", {}) if isinstance(tasks_json, Mapping) else {}
    front = {"library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["cellduality", "single-cell", "cell-sentences", stage]}
    if base not in PRESETS and "/" in base and not Path(base).exists() and not base.startswith((".", "/", "~")):
        front["base_model"] = base  # a hub id; local folders and presets are named in the text only
    datasets = sorted({str(t.get("context", {}).get("dataset")) for t in tasks.values()
                       if t.get("context", {}).get("dataset")})
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# CellDuality model `{folder_name}` ({stage})", "",
             "A causal language model that reasons about single cells written as *cell sentences* (gene "
             "symbols, most expressed first), trained with CellDuality on primal/dual task pairs.", "", "## Model", "",
             f"- **Stage:** {_stage_text(stage, info)}",
             f"- **Base model:** {_base_text(base)}"]
    if info.get("parent_model"):
        lines.append(f"- **Trained from:** `{info['parent_model']}`")
    if info.get("created"):
        lines.append(f"- **Written:** {info['created']}")
    lines += ["", "## Data and tasks", ""]
    if data_dir is not None:
        lines.append(f"- **Training data folder:** `{data_dir}`")
    if info.get("sft_data") and str(info["sft_data"]) != str(data_dir):
        lines.append(f"- **SFT data:** `{info['sft_data']}`")
    if isinstance(tasks_json, Mapping) and tasks_json.get("sentences_dir"):
        lines.append(f"- **Cell sentences:** `{tasks_json['sentences_dir']}`")
    if datasets:
        lines.append(f"- **Datasets:** {', '.join(datasets)}")
    lines += _task_lines(tasks, tasks_json)
    lines += ["", "## Training", "", *_training_lines(stage, info), "",
              "## Evaluation", "", EVAL_START, evaluation.strip(), EVAL_END, "",
              *_usage_lines(folder_name, chat_template, tasks), ""]
    return "\n".join(lines)


def _stage_text(stage: str, info: Mapping[str, Any]) -> str:
    if stage == "sft":
        return "`sft`: supervised fine-tuning on the teacher's chain-of-thought traces (paper §3.3)"
    if stage.startswith("grpo"):
        reward = info.get("reward") or stage.removeprefix("grpo-")
        kind = ("the self-supervised duality reward" if reward == "duality"
                else "the ground-truth reward (the oracle baseline)" if reward in ("ground-truth", "oracle")
                else f"reward {reward}")
        return f"`{stage}`: GRPO with {kind} (paper §3.4)"
    return f"`{stage}`"


def _base_text(base: str) -> str:
    from cellduality.models.presets import PRESETS

    if base in PRESETS:
        return f"the `{base}` preset (a Llama architecture built by CellDuality, gene-aware tokenizer trained on its data)"
    return f"`{base}`"


def _task_lines(tasks: Mapping[str, Any], tasks_json: Any) -> list[str]:
    if not tasks:
        return ["- **Tasks:** not recorded (the model was saved without a tasks folder)"]
    counts = tasks_json.get("counts", {}) if isinstance(tasks_json, Mapping) else {}
    lines = ["", "| task | dataset | labels | genes | rows per split |", "|---|---|---|---|---|"]
    for name, spec in tasks.items():
        context = spec.get("context", {})
        rows = ", ".join(f"{split} {by_task[name]}" for split, by_task in counts.items() if name in by_task)
        lines.append(f"| {name} | {context.get('dataset', '–')} | {len(context.get('labels', ())) or '–'} | "
                     f"{len(context.get('genes', ())) or '–'} | {rows or '–'} |")
    return lines


def _training_lines(stage: str, info: Mapping[str, Any]) -> list[str]:
    settings = info.get("settings") if stage == "sft" else info.get("grpo")
    lines: list[str] = []
    summary = info.get("summary") or {}
    if stage == "sft" and summary:
        loss = summary.get("final_loss")
        lines.append(f"{summary.get('steps')} optimiser steps on {summary.get('train_rows')} rows"
                     + (f", final loss {loss:.4f}" if isinstance(loss, float) else "")
                     + f"; {summary.get('parameters', 0) / 1e6:.1f}M parameters. Curves: `loss.png`, "
                     "`log_history.json`, `sft_summary.json`.")
    elif info.get("global_step") is not None:
        lines.append(f"{info['global_step']} GRPO steps. Reward curves, step timing and history: "
                     "`reward_curves.png`, `metrics.json`.")
    if settings:
        plain = json.loads(json.dumps(dict(settings), default=str))  # enums and paths as text
        lines += ["", "Settings (CellDuality's and TRL's; see docs/configs.md):", "", "```yaml",
                  yaml.safe_dump(plain, sort_keys=False).strip(), "```"]
    return lines or ["Not recorded."]


def _usage_lines(folder_name: str, chat_template: bool, tasks: Mapping[str, Any]) -> list[str]:
    prompt = ("tokenizer.apply_chat_template([{'role': 'user', 'content': task_prompt}], tokenize=False, "
              "add_generation_prompt=True)" if chat_template else 'task_prompt + "\\n### Response:\\n"')
    lines = ["## How to use", "", "With plain `transformers` (a standard causal-LM folder):", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'path = "{folder_name}"  # this folder',
             "tokenizer = AutoTokenizer.from_pretrained(path)",
             "model = AutoModelForCausalLM.from_pretrained(path)",
             f"text = {prompt}  # task_prompt: a CellDuality task prompt",
             "inputs = tokenizer(text, return_tensors='pt')",
             "out = model.generate(**inputs, max_new_tokens=256)",
             "print(tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True))",
             "```", "", "With CellDuality (prompts, parsing and expression read-back come from `cellduality.json`):",
             "", "```python", "from cellduality.models import load_model, make_generate_fn", "",
             f'model, tokenizer = load_model("{folder_name}")',
             "generate = make_generate_fn(model, tokenizer, max_new_tokens=256)  # formats the prompts itself",
             "print(generate([task_prompt])[0])", "```"]
    if "annotation" in tasks:
        lines += ["", "```bash", f"cellduality annotate cells.h5ad --model {folder_name} --out annotated.h5ad",
                  "```"]
    return lines


def write_model_card(folder: str | os.PathLike[str], info: Mapping[str, Any], *, tokenizer: Any = None,
                     data_dir: str | os.PathLike[str] | None = None, name: str | None = None) -> Path:
    """Write ``README.md`` into ``folder`` (atomically); ``name`` is the folder name shown in the card."""
    path = Path(folder) / CARD_FILE
    text = render_model_card(info, folder_name=name or Path(folder).name,
                             chat_template=bool(getattr(tokenizer, "chat_template", None)), data_dir=data_dir)
    _write_atomic(path, text)
    return path


def evaluation_section(results: Mapping[str, Mapping[str, float]], *, tasks_dir: str | os.PathLike[str],
                       split: str, out_dir: str | os.PathLike[str]) -> str:
    """Markdown of the figures of one ``evaluate`` run (the same tables as its ``report.md``)."""
    from cellduality.evaluation.reports import metric_tables

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tables = metric_tables({"this model": [dict(results)]}, "")[2:]  # without report.md's title
    body = ["#" + line if line.startswith("#") else line for line in tables]  # ## task -> ### task
    return "\n".join([f"Latest `cellduality evaluate` ({when}): the `{split}` split of `{tasks_dir}`; "
                      f"full report with baselines and plots in `{out_dir}`.", "", *body]).strip()


def update_model_card(model_dir: str | os.PathLike[str], section: str) -> Path | None:
    """Replace the evaluation section of ``model_dir``'s card with ``section``; the card's path.

    A missing card is written first from ``cellduality.json`` (folders saved before cards
    existed). ``None``, with a warning, when the card is the user's own (no markers) or the
    folder is read-only: evaluation results never depend on being able to annotate the model.
    """
    from cellduality.models.loading import read_model_info

    folder = Path(model_dir)
    path = folder / CARD_FILE
    try:
        if not path.is_file():
            write_model_card(folder, read_model_info(folder))
        text = path.read_text()
        if EVAL_START not in text or EVAL_END not in text:
            _log.warning("%s has no CellDuality evaluation markers (a card of your own?); left unchanged.", path)
            return None
        head, rest = text.split(EVAL_START, 1)
        _write_atomic(path, f"{head}{EVAL_START}\n{section.strip()}\n{EVAL_END}{rest.split(EVAL_END, 1)[1]}")
    except PermissionError:
        _log.warning("Cannot update the model card %s (no write permission); the evaluation itself is saved.", path)
        return None
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
