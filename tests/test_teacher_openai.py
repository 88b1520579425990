"""The OpenAI-compatible teacher against a real HTTP server on 127.0.0.1 started by the test.

The server implements ``POST /v1/chat/completions``; the user prompt chooses its behaviour
(``#429``, ``#500``, ``#slow``, ``#garbage``, ``#nochoices``, ``#empty``, ``#bad``, ``#partial``), so
each failure mode is exercised through the real client, real sockets and real JSON.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cellduality.errors import TeacherError
from cellduality.teacher import Generation, OpenAITeacher, TeacherRequest
from cellduality.teacher.cache import ResponseCache

SECRET = "sk-test-DO-NOT-WRITE-4f9a1c77e2"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: Counter[str] = Counter()
        self.auth: set[str] = set()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "no such route"}}')
            return
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = payload["messages"][-1]["content"]
        with self.server.lock:
            self.server.calls[prompt] += 1
            call = self.server.calls[prompt]
            self.server.auth.add(self.headers.get("Authorization", ""))
        n = int(payload.get("n", 1))
        if "#429" in prompt and call == 1:
            return self._send(429, b'{"error": {"message": "rate limited"}}')
        if "#500" in prompt and call == 1:
            return self._send(500, b'{"error": {"message": "boom"}}')
        if "#slow" in prompt and call == 1:
            import time

            time.sleep(1.5)
        if "#garbage" in prompt:
            return self._send(200, b'{"choices": [{"message": {"content": "<think> tr')
        if "#nochoices" in prompt:
            return self._send(200, b'{"id": "x", "object": "chat.completion"}')
        if "#bad" in prompt:
            return self._send(400, b'{"error": {"message": "prompt too long"}}')
        contents = [f"<think> reasoning {i} for call {call} </think> <answer> B cell </answer>" for i in range(n)]
        if "#empty" in prompt:
            contents = [""] * n
        if "#partial" in prompt and call == 1:
            contents = contents[:1] + [""] * (n - 1)
        body = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": payload["model"],
            "choices": [
                {"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": c}}
                for i, c in enumerate(contents)
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7 * n, "total_tokens": 10 + 7 * n},
        }
        self._send(200, json.dumps(body).encode())


@pytest.fixture()
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _teacher(server, tmp_path, monkeypatch, **kw) -> OpenAITeacher:
    monkeypatch.setenv("CD_TEST_KEY", SECRET)
    options = dict(
        model="teacher-x",
        base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
        api_key_env="CD_TEST_KEY",
        timeout=0.5,
        max_retries=2,
        backoff=0.01,
        max_backoff=0.05,
        concurrency=4,
        cache_path=tmp_path / "cache.sqlite",
        price_prompt_per_million=1.0,
        price_completion_per_million=2.0,
    )
    options.update(kw)
    return OpenAITeacher(**options)


def _req(prompt: str, direction: str = "primal", reference: str | None = None) -> TeacherRequest:
    return TeacherRequest(key=f"train/{direction}/{prompt}", task="annotation", direction=direction,
                          prompt=prompt, reference=reference)


def test_success_and_transient_errors_recover(server, tmp_path, monkeypatch):
    teacher = _teacher(server, tmp_path, monkeypatch)
    prompts = ["plain", "#429 rate", "#500 error", "#slow timeout", "#partial few"]
    out = teacher.generate([_req(p) for p in prompts], n=3)
    assert all(isinstance(g, Generation) for g in out)
    for prompt, gen in zip(prompts, out, strict=True):
        assert gen.error is None, (prompt, gen.error)
        assert len(gen.texts) == 3 and all("<answer> B cell </answer>" in t for t in gen.texts)
    assert server.calls["plain"] == 1
    for p in ("#429 rate", "#500 error", "#slow timeout", "#partial few"):
        assert server.calls[p] == 2, p  # one failure, one success
    assert server.auth == {f"Bearer {SECRET}"}  # the key from the environment was used
    usage = teacher.usage.to_dict()
    assert usage["retries"] == 4 and usage["failures"] == 0
    assert usage["completion_tokens"] > 0 and usage["cost_usd"] > 0


def test_persistent_garbage_is_a_failure_record_not_a_crash(server, tmp_path, monkeypatch):
    teacher = _teacher(server, tmp_path, monkeypatch)
    prompts = ["#garbage json", "#nochoices", "#empty text", "#bad request", "fine"]
    out = teacher.generate([_req(p) for p in prompts], n=2)
    for gen in out[:4]:
        assert gen.texts == [] and gen.error
    assert "malformed" in out[0].error and "train/primal/#garbage json" in out[0].error
    assert "HTTP 400" in out[3].error
    assert server.calls["#garbage json"] == 3  # 1 + max_retries
    assert server.calls["#bad request"] == 1  # a 400 is not retried
    assert len(out[4].texts) == 2 and out[4].error is None
    assert teacher.usage.failures == 4


def test_cache_hit_on_rerun_costs_no_requests(server, tmp_path, monkeypatch):
    prompts = ["a", "b", "#500 c"]
    first = _teacher(server, tmp_path, monkeypatch).generate([_req(p) for p in prompts], n=2)
    calls = sum(server.calls.values())
    again = _teacher(server, tmp_path, monkeypatch)
    second = again.generate([_req(p) for p in prompts], n=2)
    assert sum(server.calls.values()) == calls  # nothing re-requested
    assert [g.texts for g in first] == [g.texts for g in second]
    assert all(g.cached for g in second) and again.usage.cache_hits == 3 and again.usage.api_calls == 0
    # other sampling parameters are another key: the server is asked again
    _teacher(server, tmp_path, monkeypatch, temperature=0.1).generate([_req("a")], n=2)
    assert server.calls["a"] == 2


def test_partial_cache_is_topped_up_not_repaid(server, tmp_path, monkeypatch):
    teacher = _teacher(server, tmp_path, monkeypatch, max_retries=0)
    gen = teacher.generate([_req("#partial x")], n=3)[0]
    assert len(gen.texts) == 1 and "only 1 of 3" in gen.error
    gen = _teacher(server, tmp_path, monkeypatch, max_retries=0).generate([_req("#partial x")], n=3)[0]
    assert len(gen.texts) == 3 and gen.error is None
    assert "call 1" in gen.texts[0] and all("call 2" in t for t in gen.texts[1:])
    assert server.calls["#partial x"] == 2


def test_dual_requests_show_the_reference_primal_do_not(server, tmp_path, monkeypatch):
    teacher = _teacher(server, tmp_path, monkeypatch)
    primal = teacher.messages(_req("Which type?", reference="SHOULD NOT APPEAR"))
    dual = teacher.messages(_req("Which genes?", direction="dual", reference="CD74 HLA-DRA"))
    assert "SHOULD NOT APPEAR" not in json.dumps(primal)
    assert "CD74 HLA-DRA" in dual[-1]["content"]


def test_api_key_is_never_written_or_logged(server, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    teacher = _teacher(server, tmp_path, monkeypatch)
    teacher.generate([_req(p) for p in ["k1", "#429 k2", "#garbage k3"]], n=2)
    teacher.cache.close()
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert written and SECRET.encode() not in written
    assert SECRET not in caplog.text
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in json.dumps(teacher.describe()) + json.dumps(teacher.usage.to_dict())
    assert "retry" in caplog.text  # the retries were logged, without the key


def test_teacher_that_is_down_is_one_line_error(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CD_TEST_KEY", SECRET)
    teacher = OpenAITeacher(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="CD_TEST_KEY",
                            max_retries=1, backoff=0.01, timeout=0.5)
    with pytest.raises(TeacherError) as err:
        teacher.generate([_req("x")], n=1)
    message = str(err.value)
    assert "unreachable" in message and "\n" not in message and SECRET not in message


def test_wrong_route_and_missing_key_are_one_line_errors(server, tmp_path, monkeypatch):
    teacher = _teacher(server, tmp_path, monkeypatch, base_url=f"http://127.0.0.1:{server.server_address[1]}/nope")
    with pytest.raises(TeacherError, match="HTTP 404"):
        teacher.generate([_req("x")], n=1)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
        OpenAITeacher(model="gpt-4o")


def test_cache_survives_reopen(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put("k", ["a", "b"], 3, 4)
    cache.close()
    again = ResponseCache(tmp_path / "c.sqlite")
    hit = again.get("k")
    assert hit is not None and hit.texts == ["a", "b"] and hit.completion_tokens == 4
    assert again.get("missing") is None and len(again) == 1
