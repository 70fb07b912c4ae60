"""The llm runner on the built-in ``offline/...`` provider, and the provider itself (issue 4).

Runs drive the real CLI in-process (tests/llmkit.py), through the real litellm code path, and
share one litellm import. What must own a process -- what ``--help``, ``validate`` and
``status`` import, the bundled example on a machine with no key -- runs as a subprocess.
Scripted failures are keyed on the request (see agentctl/offline.py), so every assert here
is about behaviour, never about time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from llmkit import EXPLORER_BODY, FINDINGS_SCHEMA, LLMProject

from agentctl import offline, prompts
from agentctl.definitions import load_pipeline
from agentctl.runners.llm import ModelError, parse_model

REPO = Path(__file__).parent.parent
PY = sys.executable


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LLMProject:
    monkeypatch.chdir(tmp_path)
    return LLMProject(tmp_path)


# --------------------------------------------------------------------------- pure parts


SCHEMAS: list[dict[str, Any]] = [
    FINDINGS_SCHEMA,
    {"type": "object", "required": ["verdict", "issues"], "additionalProperties": False,
     "properties": {"verdict": {"enum": ["pass", "revise"]},
                    "issues": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
    {"type": "object", "required": ["n", "ratio", "tags", "when", "id"], "properties": {
        "n": {"type": "integer", "exclusiveMinimum": 3, "multipleOf": 2},
        "ratio": {"type": "number", "minimum": -1, "exclusiveMaximum": 0},
        "tags": {"type": "array", "minItems": 3, "uniqueItems": True, "items": {"type": "string"}},
        "when": {"type": "string", "format": "date-time"},
        "id": {"type": "string", "pattern": "^[a-z]+(-[a-z]+)*$", "examples": ["add-tests"]}}},
    {"$defs": {"step": {"type": "object", "required": ["title"],
                        "properties": {"title": {"type": "string", "maxLength": 4}}}},
     "type": "object", "required": ["steps", "owner"],
     "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
                    "owner": {"type": ["null", "string"], "minLength": 12}}},
    {"allOf": [{"type": "object", "required": ["a"], "properties": {"a": {"const": 1}}},
               {"required": ["b"], "properties": {"b": {"type": "boolean"}}}]},
    {"oneOf": [{"type": "string", "minLength": 2}, {"type": "integer"}]},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_minimal_instance_validates(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema).validate(offline.minimal_instance(schema))


def test_offline_failures_are_keyed_on_attempt_turn_and_try() -> None:
    spec = offline.parse("offline/flaky?fail=429x2,json&attempts=1&latency=20ms")
    assert spec.name == "flaky" and spec.latency_s == 0.02 and spec.attempts == 1
    assert [spec.failure(1, 0, t) for t in range(3)] == ["429", "429", "json"]
    assert spec.failure(1, 1, 2) is None  # the repair turn gets a good reply
    assert spec.failure(2, 0, 0) is None  # only the first attempt fails
    always = offline.parse("offline/down?fail=500x*")
    assert always.failure(9, 9, 10_000) == "500"
    for bad, word in [("offline/x?fail=418", "unknown kind"), ("offline/x?colour=red", "unknown option"),
                      ("offline/x?latency=soon", "duration"), ("offline/x?fail=500xz", "count")]:
        with pytest.raises(offline.OfflineSpecError, match=word):
            offline.parse(bad)


def test_model_options() -> None:
    spec = parse_model("openai/gpt-4o-mini?api_base=http://127.0.0.1:9/v1&timeout=2s&retries=0"
                       "&backoff=250ms&temperature=0")
    assert (spec.model, spec.api_base, spec.timeout_s, spec.retries, spec.backoff_s) == (
        "openai/gpt-4o-mini", "http://127.0.0.1:9/v1", 2.0, 0, 0.25)
    assert spec.params == {"temperature": 0.0} and not spec.offline
    # An offline model keeps its own options in the name litellm sees; ours are taken out.
    off = parse_model("offline/flaky?fail=429x2&retries=5")
    assert off.offline and off.model == "offline/flaky?fail=429x2" and off.retries == 5
    with pytest.raises(ModelError, match="unknown option 'colour'"):
        parse_model("openai/gpt-4o?colour=red")
    with pytest.raises(ModelError, match="retries"):
        parse_model("openai/gpt-4o?retries=-1")


# --------------------------------------------------------------------------- runs


def test_offline_run_end_to_end(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"with": {"angle": "api"}}, "b": {"needs": "a", "with": {"goal": "g"}},
                       "c": {"with": {"angle": "unrelated"}}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    assert "3/3 complete" in r.stdout
    for task in "abc":
        jsonschema.validate(proj.output(rid, task)["output"], FINDINGS_SCHEMA)

    # The prompt: the skill is the system message; b sees a's report and nothing else.
    ex = proj.exchange(rid, "b")
    system, user = ex["messages"][0], ex["messages"][1]
    assert system == {"role": "system", "content": EXPLORER_BODY}
    assert proj.output(rid, "a")["summary"] in user["content"]
    assert "unrelated" not in user["content"] and '"goal": "g"' in user["content"]
    assert '"findings"' in user["content"]  # the report contract, with the output schema in it
    packet = json.loads((proj.run_dir(rid).task_dir("b") / "input.json").read_text())
    skill = load_pipeline(p).skills["explorer"]
    assert user["content"] == prompts.user_message(packet, skill)
    assert ex["outcome"] == "report" and ex["paid_calls"] == 1
    [call] = ex["calls"]
    assert call["params"] == {"model": "offline/echo", "response_format": {"type": "json_object"}}
    assert call["sent_messages"] == 2 and call["response"]["usage"]["total_tokens"] > 0
    for task in "abc":  # one call: one file of the attempt's (exchange.json holds the prompt)
        tdir = proj.run_dir(rid).task_dir(task)
        assert sorted(f.name for f in tdir.iterdir()) == [
            "attempt-1.exchange.json", "input.json", "output.json"]

    # Tokens and cost per call (WAL), per task and in totals (status --json).
    rows = proj.rows(rid)
    walcalls = proj.calls(rid)
    assert len(walcalls) == 3
    for c in walcalls:
        u = c["response"]["usage"]
        assert c["tokens"] == u["total_tokens"] > 0
        assert c["cost_usd"] == pytest.approx(u["prompt_tokens"] * offline.PRICE_IN
                                              + u["completion_tokens"] * offline.PRICE_OUT)
        assert rows[c["task"]]["tokens"] == c["tokens"]
        assert rows[c["task"]]["cost_usd"] == pytest.approx(c["cost_usd"], abs=1e-6)
    totals = proj.status(rid)["totals"]
    assert totals["tokens"] == sum(c["tokens"] for c in walcalls)
    assert totals["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in walcalls), abs=1e-6)


def test_retryable_errors_are_retried_with_backoff(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "offline/flaky?fail=429x2&backoff=10ms"}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    files = proj.call_files(rid, "a")
    assert [f["error"]["kind"] if f["error"] else "ok" for f in files] == ["rate_limit", "rate_limit", "ok"]
    # Exponential, with jitter: the first wait is 50-100% of 10 ms, the second of 20 ms.
    b0, b1 = files[0]["backoff_s"], files[1]["backoff_s"]
    assert 0.005 <= b0 <= 0.01 <= b1 <= 0.02
    assert len(proj.calls(rid)) == 1  # only the answer is paid for and logged
    assert proj.rows(rid)["a"]["attempts"] == 1


def test_fallback_to_the_next_model_of_a_tier(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "cheap"}},
                      models={"cheap": ["offline/down?fail=500x*&retries=1&backoff=1ms", "offline/up"]})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    files = proj.call_files(rid, "a")
    assert [(f["model"], f["error"]["kind"] if f["error"] else "ok") for f in files] == [
        ("offline/down?fail=500x*&retries=1&backoff=1ms", "server_error"),
        ("offline/down?fail=500x*&retries=1&backoff=1ms", "server_error"),
        ("offline/up", "ok")]
    assert proj.exchange(rid, "a")["answered_by"] == "offline/up"
    assert [c["model"] for c in proj.calls(rid)] == ["offline/up"]
    assert "offline/up answered" in proj.output(rid, "a")["summary"]


@pytest.mark.parametrize("kind, words", [("401", "authentication failed"),
                                         ("400", "bad request"),
                                         ("context", "context window exceeded")])
def test_non_retryable_errors_fail_at_once(proj: LLMProject, kind: str, words: str) -> None:
    p = proj.pipeline({"a": {"model": f"offline/x?fail={kind}x*", "retries": 3}})
    r, rid = proj.run(p)
    assert r.code == 1
    row = proj.rows(rid)["a"]
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["error"]["category"] == "provider_error" and words in row["error"]["message"]
    assert len(proj.call_files(rid, "a")) == 1 and proj.calls(rid) == []


def test_timeouts_that_never_end_fail_as_timeout(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "offline/x?fail=timeoutx*&retries=1&backoff=1ms"}})
    r, rid = proj.run(p)
    assert r.code == 1
    err = proj.rows(rid)["a"]["error"]
    assert err["category"] == "timeout" and "no model answered" in err["message"]


def test_invalid_json_is_sent_back_and_repaired(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "offline/x?fail=json"}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    roles = [m["role"] for m in proj.exchange(rid, "a")["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    repair = proj.exchange(rid, "a")["messages"][3]["content"]
    assert "not valid JSON" in repair
    assert len(proj.calls(rid)) == 2  # both replies were paid for and logged


def test_a_report_that_breaks_the_schema_gets_its_errors_back(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "offline/x?fail=schema"}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    repair = proj.exchange(rid, "a")["messages"][3]["content"]
    assert "summary" in repair  # the report field it left out
    jsonschema.validate(proj.output(rid, "a")["output"], FINDINGS_SCHEMA)


def test_invalid_output_after_the_bounded_repairs_is_not_retried(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "offline/x?fail=schemax*", "retries": 3}})
    r, rid = proj.run(p)
    assert r.code == 1
    row = proj.rows(rid)["a"]
    assert row["error"]["category"] == "invalid_output" and row["attempts"] == 1
    assert "after 2 repair(s)" in row["error"]["message"]
    assert len(proj.calls(rid)) == 3  # the first reply and two repairs


def test_a_paid_response_is_reused_by_the_next_attempt(proj: LLMProject) -> None:
    # Attempt 1: a bad reply (paid, logged), then the repair meets a dead provider: the
    # attempt fails, retryably. Attempt 2 sends the same first request: it is not paid again.
    p = proj.pipeline({"a": {"model": "offline/x?fail=json,500x*&attempts=1&retries=0",
                             "retries": 1}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    calls = proj.calls(rid)
    assert [(c["attempt"], c["turn"]) for c in calls] == [(1, 0), (2, 1)]
    second = proj.call_files(rid, "a", attempt=2)
    assert [f["cached"] for f in second] == [True, False]
    assert second[0]["request_hash"] == calls[0]["request_hash"]
    assert proj.exchange(rid, "a", 2)["reused_calls"] == 1


def test_an_attempt_stops_calling_once_its_budget_is_spent(proj: LLMProject) -> None:
    # The task may spend 50 tokens; the first call spends hundreds and its reply is bad.
    p = proj.pipeline({"a": {"model": "offline/x?fail=jsonx*", "budget": {"tokens": 50},
                             "retries": 2}})
    r, rid = proj.run(p)
    assert r.code == 1
    row = proj.rows(rid)["a"]
    assert row["error"]["category"] == "budget" and "budget is spent" in row["error"]["message"]
    assert len(proj.calls(rid)) == 1 and row["attempts"] == 1


def test_a_valid_reply_that_crosses_the_budget_is_kept(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"budget": {"tokens": 50}}})
    r, rid = proj.run(p)
    assert r.code == 0, r.stderr
    assert proj.rows(rid)["a"]["tokens"] > 50


def test_a_blocked_report_blocks_the_task(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "offline/x?status=blocked"}, "b": {"needs": "a"}})
    r, rid = proj.run(p)
    assert r.code == 1
    rows = proj.rows(rid)
    assert rows["a"]["status"] == "blocked" and rows["a"]["error"]["category"] == "blocked"
    assert rows["b"]["status"] == "skipped"


# --------------------------------------------------------------------------- preflight


def test_a_missing_key_is_refused_before_the_run(proj: LLMProject, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    p = proj.pipeline({"a": {"model": "openai/gpt-4o-mini"}, "b": {"model": "smart"},
                       "c": {}}, models={"smart": ["offline/echo", "anthropic/claude-3-5-haiku-latest"]})
    r = proj.cli("run", str(p))
    assert r.code == 2 and r.stdout == ""
    assert "tasks.a: model 'openai/gpt-4o-mini' needs OPENAI_API_KEY" in r.stderr
    assert "tasks.b: model 'anthropic/claude-3-5-haiku-latest' needs ANTHROPIC_API_KEY" in r.stderr
    assert "tasks.c" not in r.stderr and "Traceback" not in r.stderr
    assert not (proj.state / "runs").exists() or not any((proj.state / "runs").iterdir())


def test_models_agentctl_cannot_use_are_refused_before_the_run(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {"model": "claude-3-5-haiku-latest"},
                       "b": {"model": "offline/x?fail=teapot"},
                       "c": {"model": "openai/gpt-4o?colour=red"}})
    r = proj.cli("run", str(p))
    assert r.code == 2
    assert "tasks.a: model 'claude-3-5-haiku-latest': litellm cannot tell its provider" in r.stderr
    assert "tasks.b: 'offline/x?fail=teapot': fail=teapot: unknown kind 'teapot'" in r.stderr
    assert "tasks.c: model 'openai/gpt-4o?colour=red': unknown option 'colour'" in r.stderr
    assert "3 error(s)" in r.stderr


# --------------------------------------------------------------------------- processes


def _importtime(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, set[str]]:
    r = subprocess.run([PY, "-X", "importtime", "-m", "agentctl", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    modules = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    return r.returncode, modules


def test_help_validate_and_status_never_import_litellm(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {}, "b": {"needs": "a", "model": "openai/gpt-4o"}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
    state = str(proj.state)
    for args in (["--help"], ["validate", str(p)], ["status", "--state-dir", state],
                 ["status", "--json", "--state-dir", state]):
        rc, modules = _importtime(args, proj.root, env)
        assert rc == 0, args
        assert "agentctl" in modules and not any(m.split(".")[0] == "litellm" for m in modules), args


def test_preflight_of_a_run_without_llm_tasks_does_not_import_litellm(proj: LLMProject) -> None:
    (proj.root / "pipelines").mkdir(exist_ok=True)
    p = proj.root / "pipelines" / "cmd.yaml"
    p.write_text("name: cmd\ntasks:\n  a: {command: [python3, -c, pass]}\n")
    code = ("import sys; from agentctl.definitions import load_pipeline; "
            "from agentctl.runners import llm; "
            f"llm.preflight(load_pipeline({str(p)!r})); "
            "import threading; assert not any(t.name.startswith('agentctl-import') for t in threading.enumerate()); "
            "assert 'litellm' not in sys.modules, 'imported'")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_bundled_example_runs_offline_with_no_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AGENTCTL_") and not k.endswith("_API_KEY")}
    env["AGENTCTL_PLAIN"] = "1"
    r = subprocess.run([PY, "-m", "agentctl", "run", "pipelines/repo-review.yaml",
                        "--state-dir", str(tmp_path / "state")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "5/5 complete" in r.stdout
    [run] = (tmp_path / "state" / "runs").iterdir()
    wal = [json.loads(line) for line in (run / "wal.jsonl").read_text().splitlines()]
    assert sum(1 for rec in wal if rec["type"] == "llm_call") == 4  # the four skill tasks
    review = json.loads((run / "tasks" / "review" / "output.json").read_text())
    schema = json.loads((REPO / "skills" / "reviewer" / "assets" / "output.schema.json").read_text())
    jsonschema.validate(review["output"], schema)


def test_a_person_retrying_invalid_output_gets_fresh_replies(proj: LLMProject) -> None:
    # Attempt 1 exhausts its repairs on bad replies. Replaying those paid replies on a retry
    # would fail the same way for free, so `--retry-failed` must ask the model again.
    p = proj.pipeline({"a": {"model": "offline/x?fail=jsonx*&attempts=1"}})
    r, rid = proj.run(p)
    assert r.code == 1 and proj.rows(rid)["a"]["error"]["category"] == "invalid_output"
    first = len(proj.calls(rid))
    again = proj.cli("resume", rid, "--retry-failed")
    assert again.code == 0, again.stderr
    calls = proj.calls(rid)
    assert len(calls) > first and {c["attempt"] for c in calls[first:]} == {2}
    assert not any(f.get("cached") for f in proj.call_files(rid, "a", attempt=2))
    state = proj.replay(rid)
    # Usage stays with the attempt that paid it, and adds up to the task's.
    a = state.tasks["a"]
    assert a.attempts[0].tokens > 0 and a.attempts[1].tokens > 0
    assert a.attempts[0].tokens + a.attempts[1].tokens == a.tokens
