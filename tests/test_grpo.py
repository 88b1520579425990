"""Stage 2 GRPO: both reward modes end to end on the `tiny` preset, the annotation-free guarantee,
zero advantage when every completion is malformed, kill -9 + resume, vLLM routing (fake engines)
and the shipped multi-GPU configs (validated by a dry run)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from cellduality.config import load_config
from cellduality.errors import CellDualityError, ConfigError
from cellduality.rewards import DualityReward
from cellduality.tasks import format_response, load_tasks, loads
from cellduality.training.grpo import GRPOSettings, build_grpo_config, dry_run, run_grpo
from cellduality.training.grpo_policy import vllm_colocate_generate_fn, vllm_server_generate_fn

REPO = Path(__file__).resolve().parents[1]
FAST = {"num_generations": 4, "prompts_per_step": 2, "max_completion_length": 12, "dual_max_new_tokens": 12,
        "learning_rate": 1e-4, "save_steps": 50}


# ---- settings and shipped configs -----------------------------------------------------------


def test_settings_reject_typos_and_impossible_batches(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_generation: 8\n")
    with pytest.raises(ConfigError, match="num_generations"):
        load_config(GRPOSettings, bad)
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        load_config(GRPOSettings, None, num_generations=8, prompts_per_step=1, per_device_train_batch_size=3)
    with pytest.raises(ConfigError, match="report_to"):
        load_config(GRPOSettings, None, report_to="tensorbord")
    with pytest.raises(ConfigError, match="cannot be split over 3 processes"):
        build_grpo_config(GRPOSettings(num_generations=8, prompts_per_step=2), tmp_path, n_processes=3)
    assert GRPOSettings(report_to="wandb").report_to == ["wandb"]


def test_any_trl_field_from_yaml_reaches_the_trainer_config(tmp_path):
    """TRL fields CellDuality never mentions pass through to GRPOConfig, typed, from a config file."""
    config = tmp_path / "grpo.yaml"
    config.write_text("mask_truncated_completions: true\ntop_k: '20'\nrepetition_penalty: 1.1\n"
                      "generation_kwargs: {min_p: 0.05}\nvllm_gpu_memory_utilization: 0.5\n")
    settings = load_config(GRPOSettings, config)
    assert settings.top_k == 20  # converted to TRL's annotated type
    args = build_grpo_config(settings, tmp_path / "ck", target="cpu")
    assert args.mask_truncated_completions is True and args.top_k == 20 and args.repetition_penalty == 1.1
    assert args.generation_kwargs == {"min_p": 0.05} and args.vllm_gpu_memory_utilization == 0.5
    default = build_grpo_config(GRPOSettings(), tmp_path / "ck2", target="cpu")
    assert default.mask_truncated_completions is False and default.top_k == 0
    # our defaults still win over TRL's (beta 0.0, scale_rewards group, learning rate 1e-6, seed 42 there)
    assert (default.beta, default.loss_type, default.scale_rewards, default.learning_rate, default.seed,
            default.data_seed) == (0.04, "dapo", "none", 5e-5, 0, 0)


def test_unknown_derived_and_mistyped_keys_are_one_line_errors(tmp_path):
    cases = {"mask_truncated_completion: true": "unknown key 'mask_truncated_completion'. Did you mean "
                                                "mask_truncated_completions",
             "top_k: many": "invalid value for 'top_k'",
             "gradient_accumulation_steps: 4": "'gradient_accumulation_steps' is set by CellDuality from prompts_per_step, num_generations",
             "no_such_thing: 1": "unknown key 'no_such_thing'. Valid keys: the fields of GRPOSettings and of "
                                 "trl.GRPOConfig"}
    for text, expected in cases.items():
        config = tmp_path / "bad.yaml"
        config.write_text(text + "\n")
        with pytest.raises(ConfigError) as err:
            load_config(GRPOSettings, config)
        assert str(err.value).startswith(f"{config}: ") and expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="reward_weights has 2 value"):
        build_grpo_config(GRPOSettings(reward_weights=[1.0, 0.5]), tmp_path / "ck", target="cpu")
    args = build_grpo_config(GRPOSettings(faithfulness_weight=0.3, reward_weights=[2.0, 0.5]), tmp_path / "ck", target="cpu")
    assert args.reward_weights == [2.0, 0.5]  # explicit weights win over [1, faithfulness_weight]


def test_set_option_on_the_command_line(tasks_dir, sft_dir, tmp_path, capsys):
    from cellduality.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["grpo", str(tasks_dir), str(tmp_path / "o"), "--sft-model", str(sft_dir), "--dry-run",
              "--set", "mask_truncated_completions=true", "--set", "generation_kwargs={min_p: 0.05}"])
    assert done.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["settings"]["mask_truncated_completions"] is True
    assert summary["settings"]["generation_kwargs"] == {"min_p": 0.05}
    for bad, expected in [("top_k", "is not KEY=VALUE"), ("mask_truncated_completion=true", "Did you mean")]:
        with pytest.raises(SystemExit) as exit_:
            main(["grpo", str(tasks_dir), str(tmp_path / "o"), "--dry-run", "--set", bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and "Traceback" not in err


def test_task_weight_typos_are_errors(tasks_dir, sft_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown tasks"):
        dry_run(tasks_dir, tmp_path / "o", sft_dir, GRPOSettings(task_weights={"anotation": 1}))


def test_cpu_config_is_cpu_safe_and_derives_accumulation(tmp_path):
    config = build_grpo_config(GRPOSettings(num_generations=8, prompts_per_step=4, per_device_train_batch_size=8,
                                            epsilon=0.3, beta=0.1), tmp_path, target="cpu")
    assert (config.use_cpu, config.bf16, config.gradient_checkpointing) == (True, False, False)
    assert config.gradient_accumulation_steps == 4 and config.generation_batch_size == 32
    assert (config.epsilon, config.beta, config.num_generations) == (0.3, 0.1, 8)


SHIPPED = sorted(p.relative_to(REPO) for p in [*REPO.glob("configs/grpo*.yaml"), *REPO.glob("configs/paper/grpo*.yaml")])


@pytest.mark.parametrize("relative", SHIPPED, ids=str)
def test_shipped_configs_dry_run(relative, tasks_dir, sft_dir, tmp_path):
    settings = load_config(GRPOSettings, REPO / relative)
    processes = 7 if settings.vllm_mode == "server" and settings.use_vllm else (8 if settings.use_vllm else 1)
    summary = dry_run(tasks_dir, tmp_path / "out", sft_dir, settings, n_processes=processes)
    assert summary["generation_batch_size"] == settings.prompts_per_step * settings.num_generations
    assert summary["generation_batch_size"] % settings.num_generations == 0
    assert summary["dataset"] == ("rl" if settings.reward == "duality" else "rl_oracle")
    assert summary["use_vllm"] == settings.use_vllm and summary["sft_model"]["stage"] == "sft"
    if settings.use_vllm:
        assert summary["bf16"] is True
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"


def test_paper_configs_match_the_paper_and_differ_only_in_the_reward():
    duality = yaml.safe_load((REPO / "configs/paper/grpo_duality_llama3b.yaml").read_text())
    oracle = yaml.safe_load((REPO / "configs/paper/grpo_oracle_llama3b.yaml").read_text())
    assert duality.pop("reward") == "duality" and oracle.pop("reward") == "ground-truth"
    assert duality == oracle
    settings = GRPOSettings(**duality)
    assert settings.num_generations == 8 and settings.beta > 0 and settings.epsilon > 0
    assert settings.completions_per_step % (8 * settings.per_device_train_batch_size) == 0  # 8 GPUs


@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_deepspeed_configs(stage):
    accel = yaml.safe_load((REPO / f"configs/accelerate/zero{stage}.yaml").read_text())
    assert accel["distributed_type"] == "DEEPSPEED" and accel["num_processes"] == 8
    ds_path = REPO / accel["deepspeed_config"]["deepspeed_config_file"]
    ds = json.loads(ds_path.read_text())
    assert ds["zero_optimization"]["stage"] == stage
    # "auto" values are filled from the GRPOConfig by transformers' DeepSpeed integration
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"


# ---- annotation-free by construction ---------------------------------------------------------


def test_duality_mode_refuses_a_labelled_set(tasks_dir, sft_dir, tmp_path):
    with pytest.raises(CellDualityError, match="ground-truth column"):
        dry_run(tasks_dir / "rl_oracle", tmp_path / "o", sft_dir, GRPOSettings(reward="duality"))
    with pytest.raises(CellDualityError, match="ground-truth column"):
        run_grpo(tasks_dir / "rl_oracle", tmp_path / "o", sft_dir, GRPOSettings(reward="duality", **FAST))
    assert dry_run(tasks_dir, tmp_path / "o", sft_dir, GRPOSettings())["dataset"] == "rl"
    assert dry_run(tasks_dir, tmp_path / "o", sft_dir, GRPOSettings(reward="ground-truth"))["dataset"] == "rl_oracle"


def test_labels_cannot_influence_the_duality_reward(tasks_dir):
    tasks = load_tasks(tasks_dir)
    rows = [r for r in load_from_disk(str(tasks_dir / "rl_oracle"))["train"]]
    # Well-formed primal answers: the reference answer for half the rows, another candidate otherwise.
    completions = []
    for i, row in enumerate(rows):
        task = tasks[row["task"]]
        target = loads(row["target"])
        if task.kind == "classification" and i % 2:
            target = next(label for label in task.context.labels if label != target)
        completions.append(format_response("", task.render_answer(target)))

    def generate(prompts):  # a deterministic "policy" whose dual answer depends on the prompt only
        return [format_response("", " ".join(sorted(set(p.split()))[:6])) for p in prompts]

    columns = {k: [r[k] for r in rows] for k in ("task", "known", "unknown", "seed")}
    reward = DualityReward(tasks, generate)
    plain = reward([r["prompt"] for r in rows], completions, **columns)
    shuffled = list(reversed(columns_target := [r["target"] for r in rows]))
    with_labels = reward([r["prompt"] for r in rows], completions, **columns, target=columns_target)
    with_wrong_labels = reward([r["prompt"] for r in rows], completions, **columns, target=shuffled)
    assert plain == with_labels == with_wrong_labels
    assert reward.last_stats["n_dual"] == len(rows)


# ---- training ---------------------------------------------------------------------------------


def _accept_any_primal(monkeypatch, tasks_dir):
    """Make every annotation completion 'well formed' so the dual pass of the live policy runs
    (an untrained tiny model never writes a parsable answer on its own)."""
    from cellduality.tasks.annotation import AnnotationTask

    label = load_tasks(tasks_dir)["annotation"].context.labels[0]
    monkeypatch.setattr(AnnotationTask, "parse_primal", lambda self, text: label)


@pytest.mark.parametrize(("mode", "dual_reward"), [("duality", "paper"), ("duality", "likelihood"),
                                                   ("ground-truth", "likelihood")])
def test_a_few_grpo_steps_in_both_modes(mode, dual_reward, tasks_dir, sft_dir, tmp_path, monkeypatch):
    from cellduality.models import load_model, read_model_info

    if mode == "duality":
        _accept_any_primal(monkeypatch, tasks_dir)
    settings = GRPOSettings(reward=mode, dual_reward=dual_reward, max_steps=2,
                            task_weights={"annotation": 1, "generation": 0}, **FAST)
    out = tmp_path / "grpo"
    metrics = run_grpo(tasks_dir, out, sft_dir, settings)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["global_step"] == metrics["global_step"] == 2
    assert [h["step"] for h in saved["history"]] == [1, 2]
    assert all(set(h["tasks"]) == {"annotation"} for h in saved["history"])  # task weights honoured
    assert all(0.0 <= h["reward"] <= 1.0 and "kl" in h and "completions/mean_length" in h for h in saved["history"])
    timing = saved["timing"]
    assert timing["steps_timed"] == 2 and 0.0 < saved["reward_time_fraction"] < 1.0
    assert timing["seconds"]["rollout_generation"] > 0 and timing["seconds"]["forward_backward"] > 0
    assert (out / "reward_curves.png").stat().st_size > 0
    info = read_model_info(out)
    assert info["stage"] == ("grpo-duality" if mode == "duality" else "grpo-oracle")
    assert info["parent_model"] == str(sft_dir) and (out / "vocabulary.json").is_file()
    card = (out / "README.md").read_text()  # the model card names the data, the parent and the reward
    assert f"**Training data folder:** `{tasks_dir}`" in card and f"**Trained from:** `{sft_dir}`" in card
    assert "2 GRPO steps" in card and "| annotation |" in card and f"dual_reward: {dual_reward}" in card
    load_model(out)
    if mode == "duality":
        # the live policy did the dual pass (generated or teacher-forced), batched once per reward call
        assert timing["seconds"]["dual_generation"] > 0
        assert all(h["primal_malformed_rate"] == 0.0 for h in saved["history"])
        if dual_reward == "paper":
            assert all("dual_parse_failure_rate" in h for h in saved["history"])
            assert all(e.get("duality/n_dual", 8) == 8 for e in saved["log_history"] if "reward" in e)
        else:  # one query set per distinct cell: 2 prompts x the candidate labels
            n_labels = len(load_tasks(tasks_dir)["annotation"].context.labels)
            scored = [e["duality/n_scored"] for e in saved["log_history"] if "duality/n_scored" in e]
            assert scored and all(n_labels <= n <= 2 * n_labels for n in scored), (scored, n_labels)


def test_a_raising_distance_fails_the_run(tasks_dir, sft_dir, tmp_path, monkeypatch):
    """A bug in a task's distance is not a reward of 0: the paper reward's run stops with it."""
    from cellduality.tasks.annotation import AnnotationTask

    _accept_any_primal(monkeypatch, tasks_dir)

    def broken(self, unknown, guess):  # noqa: ANN001, ANN202
        raise KeyError("bug in distance")

    monkeypatch.setattr(AnnotationTask, "distance", broken)
    settings = GRPOSettings(dual_reward="paper", max_steps=1, task_weights={"annotation": 1, "generation": 0}, **FAST)
    with pytest.raises(KeyError, match="bug in distance"):
        run_grpo(tasks_dir, tmp_path / "grpo", sft_dir, settings)
    assert not (tmp_path / "grpo" / "metrics.json").exists()


def test_all_malformed_step_gives_zero_advantage(tasks_dir, sft_dir, tmp_path):
    """An untrained tiny model writes no parsable answer: rewards are all 0, every group has zero
    std, advantages are 0 -- no NaN, and (beta = 0) the update leaves the weights untouched."""
    import torch

    from cellduality.models import load_model

    settings = GRPOSettings(max_steps=1, beta=0.0, **FAST)
    out = tmp_path / "grpo"
    metrics = run_grpo(tasks_dir, out, sft_dir, settings)
    (step,) = metrics["history"]
    assert step["primal_malformed_rate"] == 1.0 and step["reward"] == 0.0
    assert step["frac_reward_zero_std"] == 1.0 and step["loss"] == 0.0
    numbers = [v for e in metrics["log_history"] for v in e.values() if isinstance(v, float)]
    assert numbers and not any(math.isnan(v) or math.isinf(v) for v in numbers)
    before, _ = load_model(sft_dir)
    after, _ = load_model(out)
    for (name, p), (_, q) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_kill_9_then_resume(tasks_dir, sft_dir, tmp_path):
    """A run killed with SIGKILL after its second checkpoint resumes to the same final step, and
    every step is reported exactly once."""
    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump({**FAST, "save_steps": 2, "beta": 0.0}))
    out = tmp_path / "grpo"
    cmd = [sys.executable, "-m", "cellduality.cli.main", "grpo", str(tasks_dir), str(out), "--sft-model",
           str(sft_dir), "--max-steps", "14", "--config", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "metrics.json").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 14
    assert [h["step"] for h in metrics["history"]] == list(range(1, 15))
    assert [r["step"] for r in metrics["steps"]] == list(range(1, 15))


# ---- vLLM routing (vLLM cannot run here: fake engines with the same interface) ---------------


class _Tok:
    """A whitespace tokenizer with the two methods the vLLM paths use."""

    vocab = {w: i for i, w in enumerate(["<answer>", "</answer>", "CD3D", "CD3E", "IL7R", "NKG7", "LYZ", "T", "B", "cell", "prompt"])}

    def __call__(self, text):
        return {"input_ids": [[self.vocab[w] for w in t.split()] for t in text]}

    def batch_decode(self, ids, skip_special_tokens=True):
        inverse = {i: w for w, i in self.vocab.items()}
        return [" ".join(inverse[i] for i in row) for row in ids]


def test_dual_generation_through_colocated_vllm(monkeypatch):
    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))
    tok, calls = _Tok(), []

    class LLM:
        def generate(self, requests, sampling_params, use_tqdm):
            calls.append((requests, sampling_params.kwargs))
            reply = [tok.vocab[w] for w in ["<answer>", "CD3D", "IL7R", "</answer>"]]
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=reply)]) for _ in requests]

    fn = vllm_colocate_generate_fn(LLM(), tok, max_new_tokens=7, temperature=0.0,
                                   format_prompt=lambda t, p: f"prompt {p}")
    assert fn(["T cell", "B cell"]) == ["<answer> CD3D IL7R </answer>"] * 2
    (requests, params), = calls  # one batched call
    assert requests == [{"prompt_token_ids": [10, 7, 9]}, {"prompt_token_ids": [10, 8, 9]}]
    assert params == {"n": 1, "temperature": 0.0, "max_tokens": 7}
    assert fn([]) == [] and len(calls) == 1


def test_dual_generation_through_the_vllm_server():
    tok, calls = _Tok(), []

    class Client:
        def generate(self, prompts, n, temperature, max_tokens):
            calls.append((prompts, n, temperature, max_tokens))
            return {"completion_ids": [[tok.vocab["<answer>"], p[0], tok.vocab["</answer>"]] for p in prompts]}

    engine = types.SimpleNamespace(vllm_client=Client())
    accelerator = types.SimpleNamespace(is_main_process=True, process_index=0)
    fn = vllm_server_generate_fn(engine, accelerator, tok, max_new_tokens=5, temperature=0.5,
                                 format_prompt=lambda t, p: p)
    assert fn(["IL7R cell", "NKG7 cell"]) == ["<answer> IL7R </answer>", "<answer> NKG7 </answer>"]
    assert calls == [([[4, 9], [5, 9]], 1, 0.5, 5)]


def test_greedy_dual_generation_runs_each_distinct_prompt_once():
    from cellduality.training.grpo_policy import unique_prompts

    seen = []

    def generate(prompts):
        seen.append(list(prompts))
        return [p.upper() for p in prompts]

    fn = unique_prompts(generate)
    assert fn(["a", "b", "a", "c", "b"]) == ["A", "B", "A", "C", "B"]
    assert seen == [["a", "b", "c"]]
