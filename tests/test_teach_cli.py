"""`cellduality teach` end to end on a small real tasks folder: output contract, errors, resume, API teacher."""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from datasets import load_from_disk

from cellduality.tasks import build_task_datasets, load_tasks
from cellduality.tasks.base import ANSWER_PROMPT, DIRECT_INSTRUCTION, PRIMAL_DIRECT, direct_prompt
from cellduality.tasks.builders import load_task_datasets
from cellduality.teacher import TeachConfig, build_sft
from cellduality.teacher.offline import OfflineTeacher
from helpers import run_cli, to_cells

SECRET = "sk-cli-secret-never-on-disk-93b1"


@pytest.fixture(scope="module")
def tasks_dir(pbmc_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks") / "tasks"
    build_task_datasets(to_cells(pbmc_small, "bulk_labels", top_k=48, raw=True), ["annotation", "generation"], out,
                        max_genes=16, max_examples=40, seed=0)
    return out


def test_teach_writes_the_sft_contract(tasks_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    code, stdout, _ = run_cli(["teach", tasks_dir, out, "--n", 3, "--max-examples", 25], capsys)
    assert code == 0
    sft = load_from_disk(str(out))
    assert set(sft) == {"train", "test"}
    assert sft["train"].column_names == ["prompt", "completion", "task", "direction", "id"]
    for name in ("tasks.json", "inverse.json", "vocabulary.json"):
        assert (out / name).exists() == (tasks_dir / name).exists()
    assert (out / "tasks.json").read_text() == (tasks_dir / "tasks.json").read_text()
    assert not list(tmp_path.glob(".*partial*"))  # the work folder is gone
    primal = {r["id"]: r for r in load_task_datasets(tasks_dir, "primal")["train"]}
    dual = {r["id"]: r for r in load_task_datasets(tasks_dir, "dual")["train"]}
    rows = list(sft["train"])
    kept_primal = {r["id"] for r in rows if r["direction"] == "primal"}
    direct = [r for r in rows if r["direction"] == "dual_direct"]
    # each kept dual prompt also has its direct answer (what the likelihood reward scores), nothing else
    assert direct and all(r["completion"].startswith("<answer> ") for r in direct)  # no reasoning block at all
    assert sorted(r["id"] for r in direct) == sorted(r["id"] for r in rows if r["direction"] == "dual")
    # ... asked for by its own prompt, so plain prompts keep asking for reasoning
    assert [r["prompt"] for r in direct] == [direct_prompt(r["prompt"]) for r in rows if r["direction"] == "dual"]
    # each kept primal row of a classification task also has its answer-only form (fast annotation)
    answer_only = [r for r in rows if r["direction"] == PRIMAL_DIRECT]
    kept_annotation = [r for r in rows if r["direction"] == "primal" and r["task"] == "annotation"]
    assert [r["id"] for r in answer_only] == [r["id"] for r in kept_annotation]
    assert [r["prompt"] for r in answer_only] == [direct_prompt(r["prompt"]) for r in kept_annotation]
    for row in rows:
        if row["direction"] not in ("dual_direct", PRIMAL_DIRECT):
            assert re.fullmatch(r"<think> .+ </think> <answer> .+ </answer>", row["completion"], re.S)
        if row["direction"] == "primal" and row["task"] == "annotation":
            assert row["completion"].endswith(f"<answer> {primal[row['id']]['answer']} </answer>")  # rejection sampling
        if row["direction"] == "dual":
            assert row["id"] in kept_primal  # dual rows only for accepted primal rows
            assert row["prompt"] == dual[row["id"]]["prompt"]
            assert row["completion"].endswith(f"<answer> {dual[row['id']]['answer']} </answer>")
    assert {r["task"] for r in rows} == {"annotation", "generation"} and {r["direction"] for r in rows} == {"primal", "dual", "dual_direct",
                                                                                                   PRIMAL_DIRECT}
    report = json.loads((out / "teach_report.json").read_text())
    table = {(r["split"], r["task"], r["direction"]): r for r in report["acceptance"]}
    ann = table[("train", "annotation", "primal")]
    assert ann["prompts"] == 25 and ann["candidates"] == 75 and 0.2 < ann["acceptance_rate"] < 1.0
    assert "Teacher acceptance" in stdout and "annotation" in stdout
    # an existing output is a one-line error, not an overwrite
    code, _, err = run_cli(["teach", tasks_dir, out], capsys)
    assert code == 2 and "already" in err and len(err.strip().splitlines()) == 1


def test_config_typo_and_bad_teacher_are_one_line_errors(tasks_dir, tmp_path, capsys):
    cfg = tmp_path / "teach.yaml"
    cfg.write_text("n: 2\nthreshhold: 0.3\n")
    code, _, err = run_cli(["teach", tasks_dir, tmp_path / "o", "--config", cfg], capsys)
    assert code == 2 and "threshhold" in err and "threshold" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["teach", tasks_dir, tmp_path / "o", "--teacher", "gpt"], capsys)
    assert code == 2 and "offline or openai" in err


class _Counting(OfflineTeacher):
    """The offline teacher, counting requests and optionally dying after some batches (a kill)."""

    def __init__(self, *args, die_after=None, **kw):
        super().__init__(*args, **kw)
        self.calls, self.seen, self.die_after = 0, [], die_after

    def generate(self, requests, n):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.seen += [r.key for r in requests]
        return super().generate(requests, n)


def _teacher(tasks_dir, **kw):
    return _Counting(load_tasks(tasks_dir), **kw).fit(load_task_datasets(tasks_dir, "primal")["train"])


def test_interrupted_teach_resumes_without_loss_or_duplicates(tasks_dir, tmp_path):
    config = TeachConfig(n=2, batch_size=8, max_examples=20)
    reference = tmp_path / "ref"
    full = _teacher(tasks_dir)
    build_sft(tasks_dir, reference, config, teacher=full)

    out = tmp_path / "sft"
    dying = _teacher(tasks_dir, die_after=3)
    with pytest.raises(KeyboardInterrupt):
        build_sft(tasks_dir, out, config, teacher=dying)
    assert not out.exists()  # nothing half-written
    progress = tmp_path / ".sft.teach-partial" / "progress.jsonl"
    with open(progress, "a") as fh:
        fh.write('{"key": "train/primal/torn", "spl')  # a line torn by kill -9
    resumed = _teacher(tasks_dir)
    build_sft(tasks_dir, out, config, teacher=resumed)
    assert len(set(dying.seen) & set(resumed.seen)) == 0  # finished batches were not asked again
    assert sorted(dying.seen + resumed.seen) == sorted(full.seen)
    a, b = load_from_disk(str(reference)), load_from_disk(str(out))
    for split in a:
        assert a[split].to_list() == b[split].to_list()
        assert len({(r["id"], r["direction"]) for r in b[split]}) == len(b[split])  # no duplicates (keep 1)


def test_resume_with_other_settings_is_refused(tasks_dir, tmp_path):
    out = tmp_path / "sft"
    with pytest.raises(KeyboardInterrupt):
        build_sft(tasks_dir, out, TeachConfig(n=2, batch_size=8, max_examples=20),
                  teacher=_teacher(tasks_dir, die_after=1))
    with pytest.raises(Exception, match="different settings"):
        build_sft(tasks_dir, out, TeachConfig(n=3, batch_size=8, max_examples=20), teacher=_teacher(tasks_dir))


class _Handler(BaseHTTPRequestHandler):
    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        prompt = payload["messages"][-1]["content"]
        hint = re.search(r"The correct answer is: (.+)", prompt)
        answer = hint.group(1) if hint else ("CD19+ B" if "Candidate" in prompt or "Choose" in prompt
                                              or "Possible" in prompt else "CD74 HLA-DRA CD79A MS4A1")
        body = {"id": "c", "object": "chat.completion", "created": 0, "model": payload["model"],
                "choices": [{"index": i, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": f"<think> CD79A and MS4A1 mark B cells. </think> <answer> {answer} </answer>"}}
                    for i in range(payload.get("n", 1))],
                "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_openai_teacher_through_the_cli_caches_and_keeps_the_key_off_disk(tasks_dir, tmp_path, capsys, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CELLDUALITY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    args = ["teach", tasks_dir, tmp_path / "sft", "--teacher", "openai", "--model", "m",
            "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1", "--n", 2, "--max-examples", 15]
    try:
        code, stdout, err = run_cli(args, capsys)
        assert code == 0, err
        calls = _Handler.calls
        assert calls > 0 and "API calls" in stdout
        rows = list(load_from_disk(str(tmp_path / "sft"))["train"])
        b_cells = [r for r in rows if r["task"] == "annotation" and r["direction"] == "primal"]
        assert b_cells and all(r["completion"].endswith("<answer> CD19+ B </answer>") for r in b_cells)
        report = json.loads((tmp_path / "sft" / "teach_report.json").read_text())
        assert report["usage"]["completion_tokens"] > 0
        code, _, err = run_cli([*args, "--overwrite"], capsys)
        assert code == 0, err
        assert _Handler.calls == calls  # the re-run was served from the cache
        written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
        assert SECRET.encode() not in written
    finally:
        server.shutdown()
        server.server_close()


def test_direct_primal_prompt_answer_only_gives_each_cell_the_tasks_own_prompt(tasks_dir, tmp_path):
    """``direct_primal_prompt: answer_only``: the same cells under the task's answer-only prompt,
    its shared head (candidates, instruction) first, then the whole cell, the cue last."""
    build_sft(tasks_dir, tmp_path / "sft", TeachConfig(direct_primal_prompt="answer_only", max_examples=8))
    rows = list(load_from_disk(str(tmp_path / "sft"))["train"])
    primal = {r["id"]: r for r in load_task_datasets(tasks_dir, "primal")["train"]}
    kept = [r["id"] for r in rows if r["direction"] == "primal" and r["task"] == "annotation"]
    answer_only = [r for r in rows if r["direction"] == ANSWER_PROMPT]
    assert kept and [r["id"] for r in answer_only] == kept and not any(r["direction"] == PRIMAL_DIRECT for r in rows)
    task = load_tasks(tasks_dir)["annotation"]
    cells = [(json.loads(primal[i]["known"]), json.loads(primal[i]["unknown"])) for i in kept]
    assert [r["prompt"] for r in answer_only] == [task.answer_only_prompt(k, u) for k, u in cells]
    head = os.path.commonprefix([r["prompt"] for r in answer_only])
    assert all(label in head for label in task.context.labels) and "<answer>" in head
    for row, (known, unknown) in zip(answer_only, cells, strict=True):
        hidden = iter(unknown["hidden"])
        cell = [g if g is not None else next(hidden) for g in known["masked"]]
        assert row["prompt"].endswith(f" {' '.join(cell)}\n{DIRECT_INSTRUCTION}")
        assert row["completion"] == f"<answer> {primal[row['id']]['answer']} </answer>"


def test_direct_primal_prompt_both_writes_each_form_once_per_kept_cell(tasks_dir, tmp_path):
    """``direct_primal_prompt: both``: every kept annotation cell gets a ``primal_direct`` row and
    a ``primal_answer`` row with the same answer, and fast annotation reads the answer-only form."""
    from cellduality.inference.fast import taught_form

    build_sft(tasks_dir, tmp_path / "sft", TeachConfig(direct_primal_prompt="both", max_examples=8))
    rows = list(load_from_disk(str(tmp_path / "sft"))["train"])
    kept = [r for r in rows if r["direction"] == "primal" and r["task"] == "annotation"]
    by_form = {form: [r for r in rows if r["direction"] == form] for form in (PRIMAL_DIRECT, ANSWER_PROMPT)}
    assert kept and all([r["id"] for r in part] == [r["id"] for r in kept] for part in by_form.values())
    assert [r["prompt"] for r in by_form[PRIMAL_DIRECT]] == [direct_prompt(r["prompt"]) for r in kept]
    assert [r["completion"] for r in by_form[PRIMAL_DIRECT]] == [r["completion"] for r in by_form[ANSWER_PROMPT]]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "cellduality.json").write_text(json.dumps({"sft_data": str(tmp_path / "sft")}))
    assert taught_form(tmp_path / "model", "annotation") == ANSWER_PROMPT
