"""Every bad input a new user may try: one red line, exit code 2, no traceback, no file of theirs touched.

One row per case: the command line (with placeholders for the tiny fixtures built once below),
the expected exit code and a fragment of the expected message. Every row also checks that no
pre-existing file changed (byte for byte) and, for refusals, that nothing new was written.
Expensive commands (sft, grpo, evaluate, annotate) must refuse before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellduality.cli.main import main, resume_hint

N_CELLS, N_GENES = 48, 40


def _h5ad(path: Path, obs: dict, dense: np.ndarray | None = None, dtype=np.float32) -> Path:
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.5, (N_CELLS, N_GENES)).astype(dtype) if dense is None else dense
    frame = pd.DataFrame(obs, index=[f"c{i}" for i in range(N_CELLS)])
    adata = ad.AnnData(counts if dtype == np.float16 else sp.csr_matrix(counts), obs=frame)
    adata.var_names = [f"GENE{j}" for j in range(N_GENES)]
    adata.write_h5ad(path)
    return path


def _fake_model(folder: Path, fingerprint: dict | None = None, tasks: Path | None = None) -> Path:
    """A folder that `read_model_info` accepts: enough for every refusal that comes before loading weights
    (``tasks``: a tasks folder whose tasks the model records, for refusals of a task or its inputs)."""
    folder.mkdir(parents=True)
    recorded = {"tasks": json.loads((tasks / "tasks.json").read_text())} if tasks else {}
    (folder / "cellduality.json").write_text(json.dumps({"format": "cellduality.model/1", "stage": "sft", **recorded}))
    (folder / "config.json").write_text("{}")
    marker = {"command": "sft", **({"fingerprint": fingerprint} if fingerprint else {})}
    (folder / ".cellduality-output.json").write_text(json.dumps(marker))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Tiny real inputs for every stage, built once (about a second)."""
    import datasets

    from cellduality.sentences import build_cell_sentences
    from cellduality.tasks.builders import build_task_datasets

    root = tmp_path_factory.mktemp("bad")
    types = np.array(["T cell", "B cell", "NK cell"])[np.arange(N_CELLS) % 3]
    paths = {"root": root, "h5ad": _h5ad(root / "cells.h5ad", {"cell_type": types})}
    paths["other_h5ad"] = _h5ad(root / "other.h5ad", {"cell_type": types})
    paths["markup"] = _h5ad(root / "markup.h5ad", {"cell_type": np.where(types == "B cell", "B</answer>", types)})
    paths["think"] = _h5ad(root / "think.h5ad", {"cell_type": np.where(types == "B cell", "<think>B", types)})
    paths["continuous"] = _h5ad(root / "continuous.h5ad",
                                {"cell_type": np.random.default_rng(1).normal(size=N_CELLS)})
    labels = types.astype(object)
    labels[:7] = np.nan
    paths["partial"] = _h5ad(root / "partial.h5ad", {"cell_type": pd.Categorical(labels)})
    paths["nolabels"] = _h5ad(root / "nolabels.h5ad", {"cell_type": pd.Categorical([None] * N_CELLS, categories=["T cell"])})
    paths["f16"] = _h5ad(root / "f16.h5ad", {"cell_type": types}, dtype=np.float16)
    paths["pert_markup"] = _h5ad(root / "pert.h5ad", {"cell_type": types, "perturbation": np.where(
        np.arange(N_CELLS) % 2, "control", "<answer>KO</answer>")})

    adata = ad.read_h5ad(paths["h5ad"])
    cells = build_cell_sentences(adata, top_k=24, label_keys=["cell_type"], seed=0)
    paths["sent"] = cells.save(root / "sentences")
    paths["tasks"] = root / "tasks"
    build_task_datasets(paths["sent"], ["annotation"], paths["tasks"], max_genes=12)
    no_test = build_cell_sentences(adata, top_k=24, label_keys=["cell_type"], seed=0, test_size=0.0)
    paths["tasks_notest"] = root / "tasks_notest"
    build_task_datasets(no_test, ["annotation"], paths["tasks_notest"], max_genes=12)

    sft = root / "sft_data"
    row = {"prompt": "Which cell type? GENE1 GENE2", "completion": "<think> x </think> <answer> T cell </answer>",
           "task": "annotation", "direction": "primal", "id": "annotation:c0"}
    datasets.DatasetDict({"train": datasets.Dataset.from_list([row] * 4)}).save_to_disk(str(sft))
    (sft / ".cellduality-output.json").write_text(json.dumps({"command": "teach"}))
    paths["sft"] = sft
    paths["model"] = _fake_model(root / "model", fingerprint={"settings": {"max_steps": 5}})
    paths["model2"] = _fake_model(root / "model2")
    build_task_datasets(paths["sent"], ["annotation", "generation"], root / "tasks_gen", max_genes=12)
    paths["task_model"] = _fake_model(root / "task_model", tasks=root / "tasks_gen")

    user = root / "user"
    user.mkdir()
    (user / "thesis.docx").write_bytes(b"irreplaceable")
    paths["user"] = user
    (root / "dir.h5ad").mkdir()
    (root / "dir.h5ad" / "keep.txt").write_text("mine")
    paths["dir_h5ad"] = root / "dir.h5ad"
    cwd = root / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("my notes")
    paths["cwd"] = cwd
    config = root / "teach_openai.yaml"
    config.write_text("max_retries: 0\nbackoff: 0\ntimeout: 2\n")
    paths["teach_cfg"] = config
    sft_cfg = root / "sft_bad.yaml"
    sft_cfg.write_text("max_steps: 0\n")
    paths["sft_cfg"] = sft_cfg
    return paths


# (name, argv with {placeholders}, exit code, fragment of the message)
CASES = [
    # ---- output folders: never a user's files, never an input, never another command's folder
    ("sentences-into-user-folder", "sentences {h5ad} {user}", 2, "did not write"),
    ("sentences-over-own-output", "sentences {h5ad} {sent}", 2, "--overwrite"),
    ("sentences-into-cwd", "sentences {h5ad} .", 2, "current folder"),
    ("sentences-into-parent-of-cwd", "sentences {h5ad} {root}", 2, "current folder"),
    ("sentences-out-is-a-file", "sentences {h5ad} {h5ad}", 2, "existing file"),
    ("sentences-out-below-a-file", "sentences {h5ad} {other_h5ad}/sub", 2, "is a file"),
    ("sentences-into-tasks-folder", "sentences {h5ad} {tasks}", 2, "`cellduality tasks build`"),
    ("sentences-into-model-folder", "sentences {h5ad} {model}", 2, "`cellduality sft`"),
    ("sentences-out-contains-input", "sentences {root}/user/../cells.h5ad {root}/x/..", 2, "current folder"),
    ("tasks-over-own-input", "tasks build {sent} {sent} --task annotation --overwrite", 2, "is the input"),
    ("tasks-inside-input", "tasks build {sent} {sent}/tasks --task annotation", 2, "is inside the input"),
    ("tasks-into-user-folder", "tasks build {sent} {user} --task annotation", 2, "did not write"),
    ("tasks-over-own-output", "tasks build {sent} {tasks} --task annotation", 2, "--overwrite"),
    ("tasks-into-model-folder", "tasks build {sent} {model} --task annotation --overwrite", 2, "`cellduality sft`"),
    ("tasks-into-cwd", "tasks build {sent} . --task annotation", 2, "current folder"),
    ("teach-into-user-folder", "teach {tasks} {user}", 2, "did not write"),
    ("teach-over-own-input", "teach {tasks} {tasks} --overwrite", 2, "is the input"),
    ("teach-into-sentences", "teach {tasks} {sent} --overwrite", 2, "`cellduality sentences`"),
    ("teach-out-is-a-file", "teach {tasks} {h5ad}", 2, "existing file"),
    ("sft-into-user-folder", "sft {sft} {user}", 2, "did not write"),
    ("sft-over-own-input", "sft {sft} {sft}", 2, "is the input"),
    ("sft-into-tasks-folder", "sft {sft} {tasks}", 2, "`cellduality tasks build`"),
    ("sft-over-finished-model", "sft {sft} {model}", 2, "--resume"),
    ("sft-resume-other-settings", "sft {sft} {model} --resume --max-steps 3", 2, "other inputs or settings"),
    ("sft-out-is-a-file", "sft {sft} {h5ad}", 2, "existing file"),
    ("grpo-resume-into-sft-model", "grpo {tasks} {model} --sft-model {model} --resume", 2, "is the input"),
    ("grpo-resume-other-sft-model", "grpo {tasks} {model2} --sft-model {model} --resume", 2, "`cellduality sft`"),
    ("grpo-into-user-folder", "grpo {tasks} {user} --sft-model {model}", 2, "did not write"),
    ("grpo-into-tasks", "grpo {tasks} {tasks} --sft-model {model} --resume", 2, "is the input"),
    ("evaluate-over-model", "evaluate {model} {tasks} {model}", 2, "is the input"),
    ("evaluate-into-cwd", "evaluate {model} {tasks} .", 2, "current folder"),
    ("evaluate-into-user-folder", "evaluate {model} {tasks} {user}", 2, "did not write"),
    ("evaluate-inside-tasks", "evaluate {model} {tasks} {tasks}/eval", 2, "is inside the input"),
    ("evaluate-out-is-a-file", "evaluate {model} {tasks} {h5ad}", 2, "existing file"),
    ("annotate-over-input", "annotate {h5ad} --model {model} --out {h5ad}", 2, "input file"),
    ("annotate-over-other-file", "annotate {h5ad} --model {model} --out {other_h5ad}", 2, "--overwrite"),
    ("annotate-into-model", "annotate {h5ad} --model {model} --out {model}/cells.h5ad", 2, "inside the input"),
    ("annotate-out-is-folder", "annotate {h5ad} --model {model} --out {dir_h5ad}", 2, "is a folder"),
    ("annotate-out-below-file", "annotate {h5ad} --model {model} --out {other_h5ad}/x.h5ad", 2, "is a file"),
    ("annotate-out-not-h5ad", "annotate {h5ad} --model {model} --out {root}/x.csv", 2, "must end in .h5ad"),
    ("annotate-not-a-model", "annotate {h5ad} --model {user} --out {root}/a.h5ad", 2, "not a CellDuality model"),
    ("sensitivity-over-input", "sensitivity {h5ad} --drug x --model {model} --out {h5ad}", 2, "input file"),
    ("perturb-over-other-file", "perturb {h5ad} --perturbation 'knockout STAT1' --model {model} --out {other_h5ad}",
     2, "--overwrite"),
    ("generate-into-model", "generate --model {model} --cell-type 'T cell' --out {model}/g.h5ad", 2, "inside the input"),
    ("predict-over-input", "predict {h5ad} --model {task_model} --task annotation --out {h5ad}", 2, "input file"),
    ("predict-over-other-file", "predict {h5ad} --model {task_model} --task annotation --out {other_h5ad}", 2,
     "--overwrite"),
    ("predict-unknown-task", "predict {h5ad} --model {task_model} --task sensitivity --out {root}/p1.h5ad", 2,
     "not trained on the 'sensitivity' task; it knows: annotation, generation"),
    ("predict-unregistered-task", "predict {h5ad} --model {task_model} --task condition --out {root}/p1.h5ad", 2,
     "not trained on the 'condition' task"),
    ("predict-unknown-input-key", "predict {h5ad} --model {task_model} --task annotation --input drug=PLX4720 "
     "--out {root}/p2.h5ad", 2, "Task 'annotation' has no input 'drug'; it takes nothing besides the cells"),
    ("predict-input-key-typo", "predict {h5ad} --model {task_model} --task generation --input cell_typ=T "
     "--out {root}/p3.h5ad", 2, "did you mean 'cell_type'?"),
    ("predict-missing-obs-column", "predict {h5ad} --model {task_model} --task generation "
     "--input cell_type=obs:celltype --out {root}/p4.h5ad", 2, "has no .obs column 'celltype'; did you mean 'cell_type'?"),
    ("predict-missing-input", "predict {h5ad} --model {task_model} --task generation --out {root}/p5.h5ad", 2,
     "needs --input cell_type=VALUE"),
    ("predict-unknown-input-value", "predict {h5ad} --model {task_model} --task generation --input 'cell_type=Neuron' "
     "--out {root}/p6.h5ad", 2, "Unknown cell type 'Neuron'"),
    ("predict-input-not-key-value", "predict {h5ad} --model {task_model} --task generation --input cell_type "
     "--out {root}/p7.h5ad", 2, "write KEY=VALUE"),
    ("predict-rerank-on-generative-task", "predict {h5ad} --model {task_model} --task generation "
     "--input cell_type=obs:cell_type --method rerank --out {root}/p8.h5ad", 2, "apply to classification tasks"),
    ("predict-bad-key-added", "predict {h5ad} --model {task_model} --task annotation --key-added 'a b' "
     "--out {root}/p9.h5ad", 2, "key_added must be a plain name"),
    ("predict-not-a-model", "predict {h5ad} --model {user} --task annotation --out {root}/p10.h5ad", 2,
     "not a CellDuality model"),
    ("quickstart-into-user-folder", "quickstart --out {user}", 2, "did not write"),
    ("quickstart-into-sentences", "quickstart --out {sent}", 2, "`cellduality sentences`"),
    ("quickstart-into-cwd", "quickstart --out .", 2, "current folder"),
    ("quickstart-fresh-user-folder", "quickstart --out {user} --fresh", 2, "did not write"),
    ("benchmark-into-user-folder", "benchmark --out {user}", 2, "did not write"),
    ("benchmark-into-model", "benchmark --out {model}", 2, "`cellduality sft`"),
    # ---- labels: nothing dropped or invented silently, markup rejected with the values
    ("labels-with-answer-tag", "sentences {markup} {root}/o1 --label-key cell_type", 2, "'B</answer>'"),
    ("labels-with-think-tag", "sentences {think} {root}/o2 --label-key cell_type", 2, "markup"),
    ("perturbation-with-tags", "sentences {pert_markup} {root}/o3 --perturbation-key perturbation", 2, "markup"),
    ("continuous-label", "sentences {continuous} {root}/o4 --label-key cell_type", 2, "continuous"),
    ("no-label-at-all", "sentences {nolabels} {root}/o5 --label-key cell_type", 2, "no labels at all"),
    ("label-column-typo", "sentences {h5ad} {root}/o6 --label-key cell_typ", 2, "not an .obs column"),
    ("partly-missing-labels-counted", "sentences {partial} {root}/new/partial --label-key cell_type", 0,
     "7 cells have no 'cell_type' label"),
    ("empty-test-split-warned", "sentences {h5ad} {root}/new/notest --label-key cell_type --test-size 0", 0,
     "test split is empty"),
    ("evaluate-empty-test-split", "evaluate {model} {tasks_notest} {root}/e1", 2, "no test examples"),
    ("teach-empty-test-split-works", "teach {tasks_notest} {root}/new/teach_notest --max-examples 4", 0, "SFT data in"),
    ("float16-matrix-works", "sentences {f16} {root}/new/f16 --label-key cell_type", 0, "Wrote 48 cell sentences"),
    # ---- numbers and options validated before any work
    ("sentences-test-size-too-big", "sentences {h5ad} {root}/o7 --test-size 1", 2, "--test-size"),
    ("sentences-negative-top-k", "sentences {h5ad} {root}/o8 --top-k -1", 2, "--top-k"),
    ("tasks-option-typo", "tasks build {sent} {root}/t1 --task annotation --option annotation.n_hiden=3", 2,
     "did you mean 'n_hidden'"),
    ("tasks-option-unknown-task", "tasks build {sent} {root}/t2 --task annotation --option annotaton.n_hidden=3", 2,
     "did you mean 'annotation'"),
    ("tasks-option-not-a-number", "tasks build {sent} {root}/t3 --task annotation --option annotation.n_hidden=x", 2,
     "whole number"),
    ("tasks-option-zero", "tasks build {sent} {root}/t4 --task annotation --option annotation.n_hidden=0", 2,
     "at least 1"),
    ("tasks-option-bad-choice", "tasks build {sent} {root}/t5 --task annotation --option annotation.hide=top", 2,
     "choose one of"),
    ("tasks-option-of-other-task", "tasks build {sent} {root}/t6 --task annotation "
     "--option annotation.include_control=false", 2, "unknown option of task 'annotation'"),
    ("tasks-option-bad-bool", "tasks build {sent} {root}/t7 --task perturbation "
     "--option perturbation.include_control=nope", 2, "true or false"),
    ("tasks-max-examples-zero", "tasks build {sent} {root}/t8 --task annotation --max-examples 0", 2, "--max-examples"),
    ("tasks-negative-weight", "tasks build {sent} {root}/t9 --task annotation --weight annotation=-1", 2, "negative"),
    ("teach-n-zero", "teach {tasks} {root}/s1 --n 0", 2, "--n"),
    ("teach-threshold-above-one", "teach {tasks} {root}/s2 --threshold 2", 2, "--threshold"),
    ("sft-max-steps-zero", "sft {sft} {root}/m1 --max-steps 0", 2, "--max-steps"),
    ("sft-max-steps-negative", "sft {sft} {root}/m2 --max-steps -1", 2, "--max-steps"),
    ("sft-epochs-zero", "sft {sft} {root}/m3 --epochs 0", 2, "--epochs"),
    ("sft-config-max-steps-zero", "sft {sft} {root}/m4 --config {sft_cfg}", 2, "max_steps"),
    ("grpo-max-steps-zero", "grpo {tasks} {root}/g1 --sft-model {model} --max-steps 0", 2, "--max-steps"),
    ("grpo-missing-sft-model", "grpo {tasks} {root}/g2", 2, "--sft-model"),
    ("evaluate-max-examples-zero", "evaluate {model} {tasks} {root}/e2 --max-examples 0", 2, "--max-examples"),
    ("evaluate-batch-size-zero", "evaluate {model} {tasks} {root}/e3 --batch-size 0", 2, "--batch-size"),
    ("evaluate-max-new-tokens-zero", "evaluate {model} {tasks} {root}/e4 --max-new-tokens 0", 2, "--max-new-tokens"),
    ("annotate-n-samples-zero", "annotate {h5ad} --model {model} --out {root}/a1.h5ad --n-samples 0", 2,
     "--n-samples"),
    ("generate-n-zero", "generate --model {model} --cell-type T --out {root}/a2.h5ad -n 0", 2, "-n"),
    ("benchmark-seeds-zero", "benchmark --out {root}/b1 --seeds 0", 2, "--seeds"),
    # ---- secrets: a credential inside a URL never appears
    ("teacher-url-credentials", "teach {tasks} {root}/s3 --teacher openai --model m --config {teach_cfg} "
     "--base-url http://alice:hunter2secret@127.0.0.1:9/v1 --max-examples 1", 2, "***@127.0.0.1"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("name", "argv", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, capsys, monkeypatch, name, argv, code, fragment):
    import shlex

    monkeypatch.chdir(world["cwd"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = shlex.split(argv.format(**{k: str(v) for k, v in world.items()}))
    before = _snapshot(world["root"])
    try:
        main(args)
        got = 0
    except SystemExit as exc:
        got = exc.code or 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert got == code, text
    assert "Traceback" not in text
    assert fragment in " ".join(text.split()), text
    if code == 2 and "Usage:" not in text:  # our own errors: exactly one line
        assert len([line for line in text.splitlines() if line.startswith("Error:")]) == 1, text
    after = _snapshot(world["root"])
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"pre-existing files changed or removed: {changed}"
    if code != 0:  # `teach` keeps finished teacher calls in a hidden work folder, to resume from
        written = sorted(p for p in set(after) - set(before) if not p.split("/")[0].endswith(".teach-partial"))
        assert not written, f"a refused command wrote {written}"
    assert "hunter2secret" not in text
    assert not any(b"hunter2secret" in p.read_bytes() for p in world["root"].rglob("*") if p.is_file())


def test_the_table_covers_every_rule():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_task_options_are_typed():
    from cellduality.cli.tasks_cmd import parse_task_options

    parsed = parse_task_options(["perturbation.include_control=false", "perturbation.mask_targets=yes",
                                 "annotation.labels=T cell, B cell", "annotation.n_hidden=4"],
                                ["annotation", "perturbation"])
    assert parsed == {"perturbation": {"include_control": False, "mask_targets": True},
                      "annotation": {"labels": ["T cell", "B cell"], "n_hidden": 4}}


def test_missing_labels_are_left_out_of_labelled_splits_and_counted(world, tmp_path):
    from cellduality.sentences import CellSentenceDataset, build_cell_sentences
    from cellduality.tasks.builders import build_task_datasets, load_task_datasets

    cells = build_cell_sentences(ad.read_h5ad(world["partial"]), top_k=24, label_keys=["cell_type"], seed=0)
    assert "nan" not in set(cells.dataset["cell_type"]) and cells.meta["missing_labels"] == {"cell_type": 7}
    manifest = build_task_datasets(cells.save(tmp_path / "s"), ["annotation"], tmp_path / "t", max_genes=12)
    primal = load_task_datasets(tmp_path / "t", "primal")
    answers = set(primal["train"]["answer"]) | set(primal["test"]["answer"])
    assert answers == {"T cell", "B cell", "NK cell"}
    assert sum(n.get("annotation", 0) for n in manifest["unlabelled_cells"].values()) == 7
    assert len(primal["train"]) + len(primal["test"]) == N_CELLS - 7
    assert len(CellSentenceDataset.load(tmp_path / "s")) == N_CELLS  # unlabelled cells are kept, not lost


def test_interrupt_prints_how_to_resume():
    assert resume_hint(["sft", "d", "out"]).endswith("cellduality sft d out --resume")
    assert resume_hint(["grpo", "t", "o", "--resume"]).endswith("cellduality grpo t o --resume")
    assert "re-running: cellduality teach t o" in resume_hint(["teach", "t", "o"])
    assert "half-written" in resume_hint(["evaluate", "m", "t", "o"])


def test_resume_fingerprint_names_the_difference(tmp_path):
    from cellduality.errors import CellDualityError
    from cellduality.outputs import check_fingerprint, record_fingerprint

    record_fingerprint(tmp_path, {"settings": {"max_steps": 5, "lr": 1e-3}}, "sft")
    check_fingerprint(tmp_path, {"settings": {"max_steps": 5, "lr": 1e-3}}, resume=True)
    with pytest.raises(CellDualityError, match=r"settings.max_steps 5 -> 9"):
        check_fingerprint(tmp_path, {"settings": {"max_steps": 9, "lr": 1e-3}}, resume=True)


def test_a_late_rank_does_not_refuse_rank_0s_fresh_folder(tmp_path, monkeypatch):
    """Under torchrun rank 0 may have created checkpoints/ and the marker before rank 1 checks OUT:
    rank 1 must not take them for someone else's run (CI once failed so); rank 0 still refuses."""
    from cellduality.errors import CellDualityError
    from cellduality.outputs import record_fingerprint
    from cellduality.training.common import prepare_output_dir

    out = tmp_path / "grpo"
    (out / "checkpoints").mkdir(parents=True)
    record_fingerprint(out, {"settings": {"lr": 1}}, "grpo")
    monkeypatch.setenv("RANK", "1")
    assert prepare_output_dir(out, False, "cellduality grpo", fingerprint={"settings": {"lr": 1}}) is None
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(CellDualityError, match="already holds"):
        prepare_output_dir(out, False, "cellduality grpo", fingerprint={"settings": {"lr": 1}})


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_parent_is_refused_before_work(world, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["annotate", str(world["h5ad"]), "--model", str(world["model"]), "--out", str(locked / "a.h5ad")])
        assert exc.value.code == 2 and "no write permission" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_redaction_masks_url_credentials_and_tokens():
    from cellduality.redaction import redact

    assert redact("https://u:p@h:1/v1") == "https://***@h:1/v1"
    assert redact("http://h/v1?api_key=abc&x=1") == "http://h/v1?api_key=***&x=1"
    assert redact("key sk-abcdefghijkl1234") == "key sk-***"
    assert redact("http://localhost:8000/v1") == "http://localhost:8000/v1"
