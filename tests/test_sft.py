"""SFT on TRL: a few steps of the tiny preset on real-gene SFT rows, LoRA, resume, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from cellduality.cli.main import main as cli_main
from cellduality.config import validate_config
from cellduality.errors import CellDualityError, ConfigError, ModelError
from cellduality.models import format_prompt, make_generate_fn, read_model_info
from cellduality.training.sft import SFTSettings, build_sft_trainer, run_sft
from helpers import make_sft_folder

FAST = {"model": "tiny", "batch_size": 8, "logging_steps": 1, "learning_rate": 3e-3, "warmup_steps": 0}


@pytest.fixture(scope="module")
def sft_dir(pbmc_small, tmp_path_factory):
    return make_sft_folder(pbmc_small, tmp_path_factory.mktemp("data") / "sft", n_cells=60)


def test_loss_is_on_completion_tokens_only(sft_dir, tmp_path):
    trainer = build_sft_trainer(sft_dir, tmp_path / "out", SFTSettings(**FAST, max_steps=1))
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    trained = labels != -100
    first = int(trained.nonzero()[0])
    # Everything before the completion is masked; the completion (incl. its EOS) is trained on.
    text = tok.decode(batch["input_ids"][0][first:], skip_special_tokens=True)
    assert text.startswith("<think>") and "</answer>" in text
    assert batch["input_ids"][0][trained][-1] == tok.eos_token_id
    assert tok.decode(batch["input_ids"][0][:first]).endswith("### Response:\n")
    assert not trainer.args.bf16 and not trainer.args.gradient_checkpointing


def test_a_few_steps_lower_the_loss_and_leave_a_loadable_hf_model(sft_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    summary = run_sft(sft_dir, out, SFTSettings(**FAST, max_steps=12, save_steps=6))
    assert summary["steps"] == 12 and summary["final_loss"] < summary["first_loss"] - 1.0
    info = read_model_info(out)
    assert info["stage"] == "sft" and info["base_model"] == "tiny" and "annotation" in info["tasks"]["tasks"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "inverse.json", "vocabulary.json", "loss.png", "log_history.json", "sft_summary.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()  # the model card: the data, the base, the run
    assert f"`{sft_dir.resolve()}`" in card and "the `tiny` preset" in card and "12 optimiser steps" in card
    assert "| annotation |" in card and "learning_rate: 0.003" in card
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(out)
    outs = make_generate_fn(model, tok, max_new_tokens=4)(["Which cell type is it?"])
    assert len(outs) == 1
    assert format_prompt(tok, "x").endswith("### Response:\n")


def test_lora_trains_adapters_and_saves_a_merged_model(sft_dir, tmp_path):
    out = tmp_path / "lora"
    summary = run_sft(sft_dir, out, SFTSettings(**FAST, max_steps=3, lora=True, lora_r=4, save_steps=100))
    assert summary["trainable_parameters"] < summary["parameters"] / 3
    assert not (out / "adapter_config.json").exists()
    weights = json.loads((out / "config.json").read_text())
    assert weights["model_type"] == "llama"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]  # noqa: SIM118


class _Crash(TrainerCallback):
    """Simulates a kill right after checkpoint ``at`` is written."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_weights_without_repeating_steps(sft_dir, tmp_path):
    settings = SFTSettings(**FAST, max_steps=6, save_steps=2, save_total_limit=5)
    straight = tmp_path / "straight"
    run_sft(sft_dir, straight, settings)

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_sft(sft_dir, cut, settings, callbacks=[_Crash(4)])
    assert not (cut / "cellduality.json").exists()  # no half-finished model
    with pytest.raises(CellDualityError, match="--resume"):
        run_sft(sft_dir, cut, settings)
    # A checkpoint cut mid-write (no trainer_state.json) is skipped.
    (cut / "checkpoints" / "checkpoint-5").mkdir()
    summary = run_sft(sft_dir, cut, settings, resume=True)
    assert summary["resumed_from"].endswith("checkpoint-4")
    assert summary["steps"] == 6 and summary["steps_this_run"] == 2

    from safetensors.torch import load_file

    a, b = load_file(straight / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_bad_inputs_are_one_line_errors(sft_dir, tmp_path):
    with pytest.raises(CellDualityError, match="does not exist"):
        run_sft(tmp_path / "missing", tmp_path / "o1", SFTSettings(**FAST))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellDualityError, match="not an SFT data folder"):
        run_sft(tmp_path / "empty", tmp_path / "o2", SFTSettings(**FAST))
    with pytest.raises(ModelError, match="does not exist"):
        run_sft(sft_dir, tmp_path / "o3", SFTSettings(**{**FAST, "model": str(tmp_path / "no-model")}))
    assert not (tmp_path / "o3").exists()
    with pytest.raises(ConfigError):
        validate_config(SFTSettings, {"learning_rat": 1e-3})


def test_trl_fields_from_yaml_reach_the_trainer(sft_dir, tmp_path):
    """Any trl.SFTConfig field passes through; fields we set from our own names say which to use."""
    from cellduality.config import load_config

    config = tmp_path / "sft.yaml"
    config.write_text("model: tiny\nmax_steps: 1\nneftune_noise_alpha: 5\noptim: adamw_torch\n"
                      "lr_scheduler_kwargs: {min_lr: 1.0e-6}\n")
    trainer = build_sft_trainer(sft_dir, tmp_path / "out", load_config(SFTSettings, config))
    args = trainer.args
    assert args.neftune_noise_alpha == 5.0 and args.optim == "adamw_torch"
    assert args.lr_scheduler_kwargs == {"min_lr": 1.0e-6}
    assert (args.learning_rate, args.lr_scheduler_type, args.seed) == (5e-4, "cosine", 0)  # our defaults
    config.write_text("num_train_epochs: 2\n")
    with pytest.raises(ConfigError, match="'num_train_epochs' is set by CellDuality from epochs"):
        load_config(SFTSettings, config)
    config.write_text("neftune_noise_alfa: 5\n")
    with pytest.raises(ConfigError, match="unknown key 'neftune_noise_alfa'. Did you mean neftune_noise_alpha"):
        load_config(SFTSettings, config)


def test_cli_reports_config_typos_and_bad_folders_in_one_line(sft_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nlearning_rat: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sft", str(sft_dir), str(tmp_path / "o"), "--config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rat'" in err and "learning_rate" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli_main(["sft", str(tmp_path), str(tmp_path / "o"), "--model", "tiny"])
    assert "not an SFT data folder" in capsys.readouterr().err


def test_cli_trains_with_flags_over_the_config(sft_dir, tmp_path, capsys):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("model: small\nbatch_size: 8\nlearning_rate: 0.003\nmax_steps: 50\n")
    with pytest.raises(SystemExit) as exit_info:  # typer's standalone mode exits 0 on success
        cli_main(["sft", str(sft_dir), str(tmp_path / "m"), "--config", str(cfg), "--model", "tiny", "--max-steps", "2"])
    assert exit_info.value.code == 0
    summary = json.loads((tmp_path / "m" / "sft_summary.json").read_text())
    assert summary["model"] == "tiny" and summary["steps"] == 2


def test_padding_free_drops_rows_over_max_length_and_matches_the_padded_loss(sft_dir, tmp_path):
    padded = build_sft_trainer(sft_dir, tmp_path / "a", SFTSettings(**FAST, max_steps=1))
    flat = build_sft_trainer(sft_dir, tmp_path / "b", SFTSettings(**FAST, max_steps=1, padding_free=True, max_length=140))
    assert 0 < len(flat.train_dataset) < len(padded.train_dataset)
    assert all(len(r["input_ids"]) <= 140 for r in flat.train_dataset)
    rows = [flat.train_dataset[i] for i in range(4)]
    batch = flat.data_collator(rows)
    assert "position_ids" in batch and batch["input_ids"].shape[0] == 1
    flat.model.load_state_dict(padded.model.state_dict())
    flat.model.eval()
    with torch.no_grad():
        assert torch.allclose(flat.model(**batch).loss, flat.model(**padded.data_collator(rows)).loss, atol=1e-5)
