"""The llm runner over the real HTTP path (issue 4, item 8).

A fake OpenAI-compatible server on 127.0.0.1 (tests/fakeopenai.py) is reached through litellm
with ``openai/...`` models whose ``api_base`` option points at it: litellm, the OpenAI SDK,
httpx and a socket are all real. The server scripts 429s, 500s, slow replies, invalid JSON
and valid reports, and records every request, so "retried", "fell back", "not sent again"
are counted on the server's side.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeopenai import FakeOpenAI, Reply
from harness import Driver, Project, check_run_files, wait_for
from llmkit import LLMProject

from agentctl import engine, store
from agentctl.runners import litellm_client
from agentctl.runners.base import Registry

KEY = "sk-test-http-0123456789abcdefghij"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LLMProject:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return LLMProject(tmp_path)


def model(server: FakeOpenAI, name: str = "gpt-4o-mini", **opts: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in opts.items())
    return f"openai/{name}?api_base={server.url}{extra}"


def kinds(proj: LLMProject, rid: str, task: str, attempt: int = 1) -> list[str]:
    return [f["error"]["kind"] if f["error"] else "ok" for f in proj.call_files(rid, task, attempt)]


def test_retry_with_backoff_over_http(proj: LLMProject, server: FakeOpenAI) -> None:
    server.script("gpt-4o-mini", Reply(status=429, headers={"Retry-After": "0"}),
                  Reply(status=500), Reply())
    p = proj.pipeline({"a": {"model": model(server, backoff="10ms")}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    reqs = server.requests_for("gpt-4o-mini")
    assert len(reqs) == 3  # no hidden SDK retries: exactly our three tries
    assert reqs[0].body == reqs[1].body == reqs[2].body
    assert reqs[0].body["response_format"] == {"type": "json_object"}
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in reqs)
    assert kinds(proj, rid, "a") == ["rate_limit", "server_error", "ok"]
    files = proj.call_files(rid, "a")
    assert files[0]["backoff_s"] == 0  # the server's Retry-After wins
    assert 0.01 <= files[1]["backoff_s"] <= 0.02  # else the second step: 50-100% of 2 x 10 ms
    assert len(proj.calls(rid)) == 1


def test_fallback_to_the_next_model_of_a_tier_over_http(proj: LLMProject, server: FakeOpenAI) -> None:
    server.script("primary", *[Reply(status=503)] * 2)
    p = proj.pipeline({"a": {"model": "cheap"}}, models={"cheap": [
        model(server, "primary", retries="1", backoff="1ms"), model(server, "gpt-4o-mini")]})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    assert [q.model for q in server.requests] == ["primary", "primary", "gpt-4o-mini"]
    assert kinds(proj, rid, "a") == ["server_error", "server_error", "ok"]
    [call] = proj.calls(rid)
    assert call["model"].startswith("openai/gpt-4o-mini?")


def test_an_invalid_reply_is_sent_back_and_repaired_over_http(proj: LLMProject, server: FakeOpenAI) -> None:
    server.script("gpt-4o-mini", Reply(content="I think the answer is {findings: many"))
    p = proj.pipeline({"a": {"model": model(server)}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    first, second = server.requests
    assert second.messages[:2] == first.messages[:2]
    assert second.messages[2] == {"role": "assistant", "content": "I think the answer is {findings: many"}
    assert second.messages[3]["role"] == "user" and "not valid JSON" in second.messages[3]["content"]
    assert [c["turn"] for c in proj.calls(rid)] == [0, 1]


def test_a_slow_reply_times_out_and_is_retried(proj: LLMProject, server: FakeOpenAI) -> None:
    server.script("gpt-4o-mini", Reply(hold=True))  # answers only when the test ends
    p = proj.pipeline({"a": {"model": model(server, timeout="1s", backoff="1ms")}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    seen = kinds(proj, rid, "a")
    # (A loaded machine may make a quick reply late too: only the first is sure to time out.)
    assert seen[0] == "timeout" and seen[-1] == "ok" and set(seen) == {"timeout", "ok"}
    assert len(server.requests) == len(seen)


def test_an_authentication_error_is_not_retried(proj: LLMProject, server: FakeOpenAI) -> None:
    server.script("gpt-4o-mini", Reply(status=401, error="Incorrect API key provided"))
    p = proj.pipeline({"a": {"model": model(server), "retries": 3}})
    r, rid = proj.run(p)
    assert r.code == 1
    assert len(server.requests) == 1
    err = proj.rows(rid)["a"]["error"]
    assert err["category"] == "provider_error"
    assert "authentication failed (401)" in err["message"] and "Incorrect API key" in err["message"]


def test_tokens_and_cost_in_status(proj: LLMProject, server: FakeOpenAI) -> None:
    server.script("gpt-4o-mini", Reply(usage=(1000, 200)), Reply(usage=(3000, 400)))
    p = proj.pipeline({"a": {"model": model(server)}, "b": {"model": model(server), "needs": "a"}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    price = litellm_client.load().model_cost["gpt-4o-mini"]
    cost_a = 1000 * price["input_cost_per_token"] + 200 * price["output_cost_per_token"]
    cost_b = 3000 * price["input_cost_per_token"] + 400 * price["output_cost_per_token"]
    rows = proj.rows(rid)
    assert (rows["a"]["tokens"], rows["b"]["tokens"]) == (1200, 3400)
    assert rows["a"]["cost_usd"] == pytest.approx(cost_a, abs=1e-6) and cost_a > 0
    assert rows["b"]["cost_usd"] == pytest.approx(cost_b, abs=1e-6)
    totals = proj.status(rid)["totals"]
    assert totals["tokens"] == 4600 and totals["cost_usd"] == pytest.approx(cost_a + cost_b, abs=1e-6)
    table = proj.cli("status", rid)
    assert table.code == 0 and "4600 tokens" in table.stdout.replace(",", "")
    assert "3400" in table.stdout.replace(",", "")


def test_a_response_is_reused_after_a_sigkill_between_response_and_commit(
        project: Project, server: FakeOpenAI, tmp_path: Path) -> None:
    """The driver is killed after the response is in the WAL and before the attempt is
    committed: resume must not ask the server again ("no paying twice")."""
    lp = LLMProject(tmp_path)
    p = lp.pipeline({"a": {"model": model(server)}})
    project.env.update(OPENAI_API_KEY=KEY, AGENTCTL_TEST_PAUSE_AFTER_CALL="600")
    driver = project.spawn("run", str(p), "--run-id", "r1")
    wal = project.state / "runs" / "r1" / "wal.jsonl"
    wait_for(lambda: wal.exists() and any(r["type"] == "llm_call" for r in project.wal("r1")),
             "the response in the WAL", timeout=120)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert len(server.requests) == 1
    assert project.replay("r1").tasks["a"].status == "running"  # the attempt never ended

    del project.env["AGENTCTL_TEST_PAUSE_AFTER_CALL"]
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stderr
    assert len(server.requests) == 1  # the server saw no second request
    state = project.replay("r1")
    assert state.tasks["a"].status == "complete" and state.tasks["a"].attempt == 2
    calls = [rec for rec in project.wal("r1") if rec["type"] == "llm_call"]
    assert [c["attempt"] for c in calls] == [1]  # paid once, in the attempt that was killed
    exchange = project.run_dir("r1").attempt_file("a", 2, "exchange.json")
    [reused] = json.loads(exchange.read_text())["calls"]
    assert reused["cached"] is True and reused["request_hash"] == calls[0]["request_hash"]
    assert state.tokens == calls[0]["tokens"]  # counted once
    check_run_files(project.run_dir("r1"))



def _kill(driver: Driver) -> None:
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


def test_a_killed_driver_leaves_exchange_json_with_the_calls_made_so_far(
        project: Project, server: FakeOpenAI, tmp_path: Path) -> None:
    """A 500, a retry answered with an invalid reply, then the repair's request hangs: the
    driver is SIGKILLed during it. exchange.json, written before that call, holds both
    earlier calls and exactly what the hanging one sent; `logs` and `trace` show them."""
    lp = LLMProject(tmp_path)
    server.script("gpt-4o-mini", Reply(status=500), Reply(content="not a report {"),
                  Reply(hold=True))
    p = lp.pipeline({"a": {"model": model(server, backoff="1ms")}})
    project.env.update(OPENAI_API_KEY=KEY)
    driver = project.spawn("run", str(p), "--run-id", "r1")
    wait_for(lambda: len(server.requests) == 3, "the repair's request", timeout=120)
    _kill(driver)
    tdir = project.run_dir("r1").task_dir("a")
    # the attempt's one file (no prompt.md: exchange.json holds the prompt as sent)
    assert sorted(f.name for f in tdir.iterdir()) == ["attempt-1.exchange.json", "input.json"]
    check_run_files(project.run_dir("r1"))  # whole files, no temp file left
    ex = json.loads((tdir / "attempt-1.exchange.json").read_text())
    assert ex["outcome"] == "running" and ex["paid_calls"] == 1 and ex["turns"] == 2
    failed, answered = ex["calls"]
    assert failed["error"]["kind"] == "server_error" and failed["response"] is None
    assert answered["error"] is None and answered["response"]["content"] == "not a report {"
    # Each request, rebuilt from exchange.json, is what the server received; and the
    # conversation is what the hanging request sent.
    for entry, seen in zip(ex["calls"], server.requests, strict=False):
        assert ex["messages"][:entry["sent_messages"]] == seen.messages
        assert entry["params"]["response_format"] == seen.body["response_format"]
    assert ex["messages"] == server.requests[2].messages
    assert ex["messages"][2] == {"role": "assistant", "content": "not a report {"}
    [paid] = [r for r in project.wal("r1") if r["type"] == "llm_call"]
    assert paid["request_hash"] == answered["request_hash"]

    logs = project.cli("logs", "r1", "a")
    assert logs.returncode == 0, logs.stderr
    assert "outcome running" in logs.stdout
    assert "--- 3 assistant · reply 1\nnot a report {\n--- 4 user\nYour reply is not a valid report" in logs.stdout
    calls = logs.stdout.split("== model calls (")[1].split("\n== ")[0].splitlines()[1:]
    assert calls[0].startswith("call 1  turn 0  openai/gpt-4o-mini?") and "error server_error" in calls[0]
    assert calls[1].startswith("    sent messages 1-2 with {")
    assert calls[2].startswith("call 2  turn 0 try 1  openai/gpt-4o-mini?") and "150 tokens" in calls[2]
    assert calls[3].startswith("    sent messages 1-2 with {") and calls[3].endswith(
        "answered by message 3 (reply 1)")
    assert len(calls) == 4
    trace = project.cli("trace", "r1", "a")
    assert trace.returncode == 0, trace.stderr
    assert f"  call 1   request {failed['request_hash']} · " in trace.stdout
    assert "error: server_error" in trace.stdout
    assert f"  call 2   request {answered['request_hash']} · " in trace.stdout

    server.release()  # (its client is gone)
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stderr
    assert len(server.requests) == 4  # the paid reply is reused, the repair sent again
    second = json.loads((project.run_dir("r1").attempt_file("a", 2, "exchange.json")).read_text())
    assert second["outcome"] == "report"
    assert [c["cached"] for c in second["calls"]] == [True, False]
    assert second["messages"][:4] == ex["messages"]


def test_a_response_logged_after_exchange_json_was_written_is_shown_from_the_wal(
        project: Project, server: FakeOpenAI, tmp_path: Path) -> None:
    """Killed after the repair's response is in the WAL and before it is used: exchange.json
    (written before that call) has the first call only; `logs` and `trace` add the second
    from the WAL, with its reply, and resume pays for neither again."""
    lp = LLMProject(tmp_path)
    server.script("gpt-4o-mini", Reply(content="not a report {"))
    p = lp.pipeline({"a": {"model": model(server)}})
    project.env.update(OPENAI_API_KEY=KEY, AGENTCTL_TEST_PAUSE_AFTER_CALL="600@2")
    driver = project.spawn("run", str(p), "--run-id", "r1")
    wal = project.state / "runs" / "r1" / "wal.jsonl"
    wait_for(lambda: wal.exists() and sum(r["type"] == "llm_call" for r in project.wal("r1")) == 2,
             "the second response in the WAL", timeout=120)
    _kill(driver)
    ex = json.loads((project.run_dir("r1").attempt_file("a", 1, "exchange.json")).read_text())
    assert ex["outcome"] == "running" and [c["turn"] for c in ex["calls"]] == [0]
    first, second = [r for r in project.wal("r1") if r["type"] == "llm_call"]

    out = project.cli("logs", "r1", "a").stdout
    calls = out.split("== model calls (")[1].split("\n== ")[0].splitlines()[1:]
    assert calls[0].startswith("call 1  turn 0  ") and first["request_hash"][:12] in calls[0]
    assert calls[2].startswith("call 2  turn 1  ") and second["request_hash"][:12] in calls[2]
    assert calls[2].endswith("(in the WAL only: made after exchange.json was last written; its reply is below)")
    reply = out.split("== raw reply of call 2 (from the WAL)\n")[1].split("\n== ")[0]
    assert json.loads(reply)["status"] == "COMPLETE"
    trace = project.cli("trace", "r1", "a").stdout
    assert f"  call 2   request {second['request_hash']} · " in trace

    del project.env["AGENTCTL_TEST_PAUSE_AFTER_CALL"]
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stderr
    assert len(server.requests) == 2  # both responses reused
    assert project.replay("r1").tasks["a"].status == "complete"


def test_a_key_missing_at_run_time_fails_at_once_naming_it(
        proj: LLMProject, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Preflight refuses such a run. Past it -- a resume in a shell without the key -- the
    attempt fails at once, naming the variable, where litellm would report a 500 and invite
    retries; nothing is sent."""
    p = proj.pipeline({"a": {"model": model(server), "retries": 3}})
    monkeypatch.delenv("OPENAI_API_KEY")
    r = proj.cli("run", str(p))
    assert r.code == 2 and "tasks.a: model 'openai/gpt-4o-mini' needs OPENAI_API_KEY" in r.stderr
    out = engine.start(p, store.StateDir(proj.state), inputs={}, run_id="nokey", model=None,
                       concurrency=None, registry=Registry(), reporter=None, preflight=None)
    assert out.status == "failed"
    err = proj.rows("nokey")["a"]["error"]
    assert err == {"category": "provider_error", "message":
                   "model 'openai/gpt-4o-mini' needs OPENAI_API_KEY, which is not set in the environment"}
    assert proj.rows("nokey")["a"]["attempts"] == 1 and server.requests == []
