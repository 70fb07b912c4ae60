"""``agentctl trace``: from a failed run to the cause, in one command (the real CLI)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

PIPELINE = """\
name: tracedemo
defaults: {retries: 1, model: offline/echo}
tasks:
  explore:
    skill: explorer
    with: {angle: api}
  keyless:
    skill: planner
    model: "offline/keyless?fail=401"
  plan:
    skill: planner
    needs: [explore, keyless]
  review:
    needs: plan
    command: [sh, -c, "echo never"]
  lint:
    command: [sh, -c, 'echo "lint: 3 errors in src/app.py" >&2; exit 2']
  stuck:
    command: [sh, -c, 'cp "$AGENTCTL_WORKSPACE/blocked.json" "$AGENTCTL_OUTPUT"']
"""


def cli(*args: str, cwd: Path, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1"}
    return subprocess.run([sys.executable, "-m", "agentctl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def write_skill(proj: Path, name: str, body: str) -> None:
    (proj / "skills" / name).mkdir(parents=True)
    (proj / "skills" / name / "SKILL.md").write_text(
        f"---\nname: {name}\ndescription: The {name}. Use in tests.\n---\n{body}\n")


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("trace")
    proj = root / "proj"
    proj.mkdir()
    write_skill(proj, "explorer", "Explore.")
    write_skill(proj, "planner", "Plan carefully.")
    (proj / "p.yaml").write_text(PIPELINE)
    (proj / "blocked.json").write_text(json.dumps(
        {"status": "BLOCKED", "summary": "no key", "blockers": ["no API key"]}))
    state = root / "state"
    p = cli("run", "p.yaml", "--run-id", "t-1", cwd=proj, state=state)
    assert p.returncode == 1, p.stdout + p.stderr
    # the skill on disk changes after the run: the trace must hash the frozen copy
    (proj / "skills" / "planner" / "SKILL.md").write_text("edited later\n")
    return proj, state, "t-1"


def status_errors(proj: Path, state: Path, rid: str) -> dict[str, Any]:
    data = json.loads(cli("status", rid, "--json", cwd=proj, state=state).stdout)
    return {t["id"]: t["error"] for t in data["tasks"]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sent_prompt(exchange: Path) -> tuple[str, int]:
    """sha256 and size of the messages an llm attempt first sent (those before the first
    reply), as compact JSON with sorted keys."""
    messages = json.loads(exchange.read_text())["messages"]
    roles = [m["role"] for m in messages]
    first = messages[:roles.index("assistant")] if "assistant" in roles else messages
    data = json.dumps(first, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest(), len(data)


def test_trace_names_model_hashes_category_and_exact_error(failed: tuple[Path, Path, str]) -> None:
    proj, state, rid = failed
    p = cli("trace", rid, cwd=proj, state=state)
    assert p.returncode == 0 and p.stderr == ""
    out = p.stdout
    rd = state / "runs" / rid
    errors = status_errors(proj, state, rid)

    assert out.startswith(f"run {rid} (tracedemo) failed · ")
    blocks = {b.split("\n", 1)[0].split()[1]: b for b in out.split("\n\n")[1:]}
    # every failing task, and nothing that did not fail on its own
    assert set(blocks) == {"keyless", "lint", "stuck"}

    k = blocks["keyless"]
    assert k.startswith("✗ keyless  failed · provider_error\n")
    assert f"  error    {errors['keyless']['message']}\n" in k  # the exact text status shows
    assert "  model    offline/keyless?fail=401\n" in k
    frozen = rd / "definition" / "skills" / "planner" / "SKILL.md"
    assert f"  skill    planner sha256:{sha(frozen)}\n           {frozen}\n" in k
    assert sha(frozen) != sha(proj / "skills" / "planner" / "SKILL.md")
    # an llm task's prompt is the messages first sent, as exchange.json records them
    exchange = rd / "tasks" / "keyless" / "attempt-1.exchange.json"
    digest, size = sent_prompt(exchange)
    assert f"  prompt   sha256:{digest} ({size} bytes)\n           {exchange} (messages 1-2)\n" in k
    [call] = json.loads(exchange.read_text())["calls"]
    assert f"request {call['request_hash']}" in k and "error: authentication" in k
    assert sorted(p.name for p in exchange.parent.iterdir()) == ["attempt-1.exchange.json", "input.json"]
    assert f"  look at  {exchange}\n" in k and f"agentctl logs {rid} keyless" in k
    assert "  skipped  plan, review\n" in k

    lint = blocks["lint"]
    assert lint.startswith("✗ lint  failed · command_failed\n")
    assert f"  error    {errors['lint']['message']}\n" in lint
    assert errors["lint"]["message"] == "exit code 2: lint: 3 errors in src/app.py"
    assert "  attempt  2 (wave 0, runner command)" in lint and "exit code 2" in lint
    assert "  before   attempt 1: [command_failed] exit code 2: lint: 3 errors in src/app.py" in lint
    assert "  model    none (a command task)\n  skill    none\n" in lint
    assert f"  look at  {rd / 'tasks' / 'lint' / 'attempt-2.stderr.log'}\n" in lint

    assert blocks["stuck"].startswith("✗ stuck  blocked · blocked\n")
    assert "  error    the agent is blocked: no API key\n" in blocks["stuck"]


def test_trace_of_a_skipped_task_follows_it_to_the_cause(failed: tuple[Path, Path, str]) -> None:
    proj, state, rid = failed
    out = cli("trace", rid, "review", cwd=proj, state=state).stdout
    blocks = out.split("\n\n")[1:]
    assert blocks[0].startswith("✗ review  skipped · upstream_failed\n")
    assert "  cause    keyless (below)" in blocks[0]
    assert blocks[1].startswith("✗ keyless  failed · provider_error   (why 'review' was skipped)\n")
    assert len(blocks) == 2


def test_trace_json(failed: tuple[Path, Path, str]) -> None:
    proj, state, rid = failed
    p = cli("trace", rid, "--json", cwd=proj, state=state)
    data = json.loads(p.stdout)
    assert data["run_id"] == rid and data["status"] == "failed"
    by = {t["task"]: t for t in data["tasks"]}
    k = by["keyless"]
    rd = state / "runs" / rid
    assert k["model"] == "offline/keyless?fail=401"
    assert k["category"] == "provider_error"
    assert k["message"] == status_errors(proj, state, rid)["keyless"]["message"]
    assert k["skill_sha256"] == sha(rd / "definition" / "skills" / "planner" / "SKILL.md")
    assert k["prompt_sha256"] == sent_prompt(rd / "tasks" / "keyless" / "attempt-1.exchange.json")[0]
    assert k["attempt_files"] == [str(rd / "tasks" / "keyless" / "attempt-1.exchange.json")]
    # the prompt's file is a path to open; what in it is the prompt is said apart
    assert k["prompt_file"] == str(rd / "tasks" / "keyless" / "attempt-1.exchange.json")
    assert k["prompt_source"] == "messages 1-2"
    assert k["caused_skips"] == ["plan", "review"]


def test_trace_of_one_task_that_worked(failed: tuple[Path, Path, str]) -> None:
    proj, state, rid = failed
    out = cli("trace", rid, "explore", cwd=proj, state=state).stdout
    block = out.split("\n\n")[1]
    assert block.startswith("✓ explore  complete\n") and "error" not in block
    assert "  model    offline/echo\n" in block
    assert "  call 1   request " in block and " tokens" in block


def test_trace_of_a_run_that_worked(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("name: fine\ntasks:\n  a:\n    runner: noop\n")
    state = tmp_path / "state"
    assert cli("run", "p.yaml", cwd=tmp_path, state=state).returncode == 0
    p = cli("trace", cwd=tmp_path, state=state)
    assert p.returncode == 0
    assert p.stdout.splitlines()[-1] == "nothing failed: no failed, blocked, cancelled or skipped tasks"


FANOUT = """\
name: fan
tasks:
  plan:
    command: [sh, -c, 'echo "{\\"status\\":\\"COMPLETE\\",\\"summary\\":\\"p\\",\\"output\\":[\\"a\\",\\"b\\",\\"c\\"]}" > "$AGENTCTL_OUTPUT"']
  work:
    needs: plan
    foreach: ${{ tasks.plan.output }}
    retries: 0
    command: [sh, -c, 'if [ "$AGENTCTL_TASK_ID" = work.1 ]; then echo "item b is broken" >&2; exit 4; fi']
  publish:
    needs: work
    command: [sh, -c, "echo published"]
"""


def test_trace_follows_a_fan_out_to_the_instance_that_failed(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(FANOUT)
    state = tmp_path / "state"
    p = cli("run", "p.yaml", "--run-id", "fan-1", cwd=tmp_path, state=state)
    assert p.returncode == 1, p.stdout + p.stderr
    out = cli("trace", "fan-1", "publish", cwd=tmp_path, state=state).stdout
    heads = [b.split("\n", 1)[0] for b in out.split("\n\n")[1:]]
    assert heads == ["✗ publish  skipped · upstream_failed",
                     "✗ work  failed · upstream_failed   (why 'publish' was skipped)",
                     "✗ work.1  failed · command_failed   (why 'publish' was skipped)"]
    assert "  group    foreach of 3: work.0, work.1, work.2\n  cause    work.1" in out
    assert "  error    exit code 4: item b is broken\n" in out
    logs = cli("logs", "fan-1", cwd=tmp_path, state=state).stdout
    assert "expand    work" in logs and "3 instances: work.0, work.1, work.2" in logs


def test_trace_usage_errors(failed: tuple[Path, Path, str]) -> None:
    proj, state, rid = failed
    p = cli("trace", rid, "revew", cwd=proj, state=state)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"agentctl: error: run {rid} has no task 'revew' (did you mean 'review'?)\n"
    p = cli("trace", "nope", cwd=proj, state=state)
    assert p.returncode == 3 and "no run 'nope'" in p.stderr


def test_trace_never_imports_litellm(failed: tuple[Path, Path, str]) -> None:
    proj, state, rid = failed
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state)}
    for cmd in (["trace", rid], ["report", rid, "-o", str(proj / "r.html")]):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentctl", *cmd], cwd=proj,
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "litellm" not in p.stderr


NO_PROMPT = ("  prompt   none on disk (exchange.json is written when the attempt ends, before a "
             "further call, or once a call has been out 0.25 s; this attempt left none)")


def _prompt_line(trace: str) -> str:
    return next(line for line in trace.splitlines() if line.startswith("  prompt "))


def _llm_project(root: Path, pipeline: str) -> Path:
    proj = root / "proj"
    (proj / "skills" / "writer").mkdir(parents=True)
    (proj / "skills" / "writer" / "SKILL.md").write_text(
        "---\nname: writer\ndescription: Writes a note. Use in tests.\n---\nWrite the note, please.\n")
    (proj / "p.yaml").write_text(pipeline)
    return proj


def test_an_llm_attempt_that_timed_out_before_its_conversation_says_only_what_is_on_disk(
        tmp_path: Path) -> None:
    """The attempt ended (timeout) before the runner had a conversation: no exchange.json,
    and trace does not claim the driver stopped (it ran to the end)."""
    proj = _llm_project(tmp_path, """\
name: quick-timeout
defaults: {retries: 0, model: "offline/echo?latency=5s"}
tasks:
  ask:
    skill: writer
    timeout: 50ms
""")
    state = tmp_path / "state"
    assert cli("run", "p.yaml", "--run-id", "t1", cwd=proj, state=state).returncode == 1
    assert status_errors(proj, state, "t1")["ask"]["category"] == "timeout"
    assert not (state / "runs" / "t1" / "tasks" / "ask" / "attempt-1.exchange.json").exists()
    assert _prompt_line(cli("trace", "t1", "ask", cwd=proj, state=state).stdout) == NO_PROMPT


def test_a_quick_answered_call_then_a_killed_driver_is_explained_without_contradiction(
        tmp_path: Path) -> None:
    """A first call answered at once (in the WAL), then the driver killed before the attempt
    ended: no exchange.json; trace lists the call and says what writes the file."""
    proj = _llm_project(tmp_path, """\
name: answered
defaults: {retries: 0, model: offline/echo}
tasks:
  ask:
    skill: writer
""")
    state = tmp_path / "state"
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1",
           "AGENTCTL_TEST_PAUSE_AFTER_CALL": "600"}
    drv = subprocess.Popen([sys.executable, "-m", "agentctl", "run", "p.yaml", "--run-id", "a1"],
                           cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    wal = state / "runs" / "a1" / "wal.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (wal.exists() and b'"llm_call"' in wal.read_bytes()):
            assert time.monotonic() < deadline and drv.poll() is None
            time.sleep(0.05)
    finally:
        os.killpg(drv.pid, signal.SIGKILL)
        drv.wait(timeout=30)
    assert not (state / "runs" / "a1" / "tasks" / "ask" / "attempt-1.exchange.json").exists()
    out = cli("trace", "a1", "ask", cwd=proj, state=state).stdout
    assert "  call 1   request " in out and _prompt_line(out) == NO_PROMPT
