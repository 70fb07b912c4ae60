"""``agentctl logs``: the real CLI, in subprocesses, on real runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentctl import store

ESC = "\x1b"

PIPELINE = """\
name: logdemo
defaults: {retries: 1, model: offline/echo}
tasks:
  fetch:
    command: [sh, -c, "echo fetched-out; echo fetched-err >&2"]
  write-note:
    skill: writer
    needs: fetch
    command: [sh, -c, 'cat >/dev/null; cp "$AGENTCTL_WORKSPACE/report.json" "$AGENTCTL_OUTPUT"']
  flaky:
    needs: fetch
    command: [sh, -c, 'echo trying; printf "fatal: \\033[31mred\\033[0m disk on fire\\n" >&2; exit 3']
  ask:
    skill: writer
    with: {angle: api}
  publish:
    needs: [write-note, flaky]
    command: [sh, -c, "echo never"]
"""


def cli(*args: str, cwd: Path, state: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1"}
    return subprocess.run([sys.executable, "-m", "agentctl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def project(root: Path) -> Path:
    proj = root / "proj"
    (proj / "skills" / "writer").mkdir(parents=True)
    (proj / "skills" / "writer" / "SKILL.md").write_text(
        "---\nname: writer\ndescription: Writes a note. Use in tests.\n---\nWrite the note, please.\n")
    (proj / "report.json").write_text(json.dumps(
        {"status": "COMPLETE", "summary": "note written", "output": {"words": 3}}))
    return proj


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A finished, failed run: command tasks (one retried then failed, writing ANSI escapes
    to stderr), a command agent with a skill (so a prompt), an llm task, a skipped task."""
    root = tmp_path_factory.mktemp("logs")
    proj = project(root)
    (proj / "p.yaml").write_text(PIPELINE)
    state = root / "state"
    p = cli("run", "p.yaml", "--run-id", "demo-1", cwd=proj, state=state)
    assert p.returncode == 1, p.stdout + p.stderr
    return proj, state, "demo-1"


def test_history_is_the_wal_as_readable_lines(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    p = cli("logs", rid, cwd=proj, state=state)
    assert p.returncode == 0 and p.stderr == ""
    lines = p.stdout.splitlines()
    records = store.scan_wal(state / "runs" / rid / "wal.jsonl").records
    assert len(lines) == len(records)  # one line per record, in order
    assert lines[0].split()[1:3] == ["run", "started"] and "pipeline=logdemo" in lines[0]
    assert lines[0].startswith(records[0]["at"][11:23])

    def line(*words: str) -> str:
        hits = [ln for ln in lines if all(w in ln for w in words)]
        assert len(hits) == 1, (words, lines)
        return hits[0]

    assert line("start", "fetch#1")
    assert "exit=0" in line("complete", "fetch#1")
    first = line("failed", "flaky#1")
    assert "[command_failed] exit code 3: fatal:" in first and first.endswith("(will retry)")
    assert "(will retry)" not in line("failed", "flaky#2")
    assert "model=offline/echo" in line("start", "ask#1")
    call = line("call", "ask#1")
    assert "model=offline/echo" in call and "tokens=" in call and "latency=" in call and "$0.0" in call
    assert "[upstream_failed] needs 'flaky', which failed" in line("skipped", "publish")
    assert lines[-1].split()[1:] == ["end", "status=failed"]
    # untrusted text cannot drive the terminal: the escape is shown, not sent
    assert ESC not in p.stdout
    assert "\\x1b[31mred\\x1b[0m" in first


def test_one_command_task(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    p = cli("logs", rid, "flaky", cwd=proj, state=state)
    assert p.returncode == 0 and p.stderr == ""
    out = p.stdout
    assert out.startswith("task flaky\n")
    assert "status failed · attempts 2" in out
    assert "error [command_failed] exit code 3: fatal: \\x1b[31mred\\x1b[0m disk on fire" in out
    # its context packet, then each attempt with its stdout and stderr
    packet = out.split("== context packet")[1].split("\n== ")[0]
    assert json.loads(packet.split("\n", 1)[1])["needs"]["fetch"]["summary"] == "fetched-out"
    tdir = state / "runs" / rid / "tasks" / "flaky"
    for n in (1, 2):
        assert f"== attempt {n} · started" in out
        assert f"files attempt-{n}.stderr.log, attempt-{n}.stdout.log (in {tdir})" in out
        assert f"== stdout ({tdir}/attempt-{n}.stdout.log)\ntrying\n" in out
        assert (f"== stderr ({tdir}/attempt-{n}.stderr.log)\nfatal: \\x1b[31mred\\x1b[0m disk on fire\n"
                in out)
    assert ESC not in out


def test_one_command_agent_with_a_skill(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    out = cli("logs", rid, "write-note", cwd=proj, state=state).stdout
    assert "== prompt (" in out and "Write the note, please." in out  # the skill, as sent
    report = out.split("== report of attempt 1\n")[1].split("\ncommitted report")[0]
    assert json.loads(report)["output"] == {"words": 3}
    assert "committed report: " in out and "output.json (the report above)" in out


def test_one_llm_task(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    out = cli("logs", rid, "ask", cwd=proj, state=state).stdout
    assert "wave 0 · runner llm · effects read-only · skill writer" in out
    assert '"angle": "api"' in out  # the context packet
    conv = out.split("== conversation (")[1].split("\n== ")[0]
    assert "--- 1 system\nWrite the note, please." in conv
    assert "--- 2 user\n## Your task" in conv
    reply = conv.split("--- 3 assistant · reply 1\n")[1]
    assert json.loads(reply.strip())["status"] == "COMPLETE"  # the raw reply
    tdir = state / "runs" / rid / "tasks" / "ask"
    assert sorted(p.name for p in tdir.iterdir()) == ["attempt-1.exchange.json", "input.json", "output.json"]
    head, *calls = out.split("== model calls (")[1].split("\n== ")[0].splitlines()
    assert head.startswith(f"{tdir}/attempt-1.exchange.json: each request is the conversation's first")
    assert len(calls) == 2  # the call, and what it sent
    assert calls[0].startswith("call 1  turn 0  offline/echo  ")
    assert " tokens  $0.0" in calls[0] and "s  request " in calls[0]
    rec = next(r for r in store.scan_wal(state / "runs" / rid / "wal.jsonl").records
           if r["type"] == "llm_call")
    assert f"{rec['tokens']} tokens" in calls[0] and rec["request_hash"][:12] in calls[0]
    assert calls[1] == ('    sent messages 1-2 with {"model": "offline/echo", "response_format": '
                        '{"type": "json_object"}}; answered by message 3 (reply 1)')
    assert "== report of attempt 1\n" in out


def test_an_older_runs_call_files_are_still_read(run: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Earlier versions kept an attempt's files in ``tasks/<id>/attempts/<n>/`` and wrote a
    call-NNN.json per request (the request in full) beside exchange.json; a driver killed
    mid-attempt left only those. Made here from a real attempt's exchange.json, as those
    versions laid them out."""
    proj, state, rid = run
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    rd = store.StateDir(copy).run(rid)
    adir = rd.task_dir("ask") / "attempts" / "1"
    adir.mkdir(parents=True)
    rd.attempt_file("ask", 1, "exchange.json").rename(adir / "exchange.json")
    ex = json.loads((adir / "exchange.json").read_text())
    [entry] = ex["calls"]
    old = {k: v for k, v in entry.items() if k not in ("sent_messages", "params")}
    old["request"] = {**entry["params"], "messages": ex["messages"][:entry["sent_messages"]]}
    (adir / "call-001.json").write_text(json.dumps(old))

    both = cli("logs", rid, "ask", cwd=proj, state=copy).stdout  # a finished old run
    assert f"== model calls ({adir}/exchange.json: " in both
    assert f"files call-001.json, exchange.json (in {adir})" in both  # listed, ...
    assert "== call-001.json" not in both  # ... but not shown again in a section of its own

    (adir / "exchange.json").unlink()  # an old run killed before the attempt ended
    out = cli("logs", rid, "ask", cwd=proj, state=copy).stdout
    calls = out.split(f"== model calls ({adir}/call-*.json: each request and response in full)\n")[1]
    assert calls.split("\n== ")[0].startswith("call 1  turn 0  offline/echo  ")
    assert entry["request_hash"][:12] in calls.split("\n")[0]
    trace = cli("trace", rid, "ask", cwd=proj, state=copy).stdout
    assert f"  call 1   request {entry['request_hash']} · offline/echo · " in trace


def test_a_task_that_never_ran(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    out = cli("logs", rid, "publish", cwd=proj, state=state).stdout
    assert "status skipped · attempts 0" in out
    assert "error [upstream_failed] needs 'flaky', which failed" in out
    assert "(none: the task never started)" in out


def test_usage_errors(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    p = cli("logs", rid, "flaki", cwd=proj, state=state)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"agentctl: error: run {rid} has no task 'flaki' (did you mean 'flaky'?)\n"
    p = cli("logs", "nope", cwd=proj, state=state)
    assert p.returncode == 3 and p.stdout == "" and "no run 'nope'" in p.stderr
    p = cli("logs", cwd=proj, state=state)  # the newest run
    assert p.returncode == 0 and "pipeline=logdemo" in p.stdout


def test_records_it_does_not_know_are_shown_not_fatal(run: tuple[Path, Path, str], tmp_path: Path) -> None:
    proj, state, rid = run
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    rd = store.StateDir(copy).run(rid)
    journal = store.Journal(rd, next_seq=store.scan_wal(rd.wal).records[-1]["seq"] + 1)
    journal.append([{"type": "escalated", "task": "flaky", "to": "oncall", "note": f"pager {ESC}[2J"},
                    {"type": "weather", "sky": "grey"},
                    {"type": "attempt_ended", "task": "ghost", "attempt": 7, "outcome": "complete"}])
    journal.close()
    p = cli("logs", rid, cwd=proj, state=copy)
    assert p.returncode == 0, p.stderr
    tail = p.stdout.splitlines()[-3:]
    assert tail[0].split()[1:4] == ["escalated", "flaky", "to=oncall"] and "note=pager \\x1b[2J" in tail[0]
    assert tail[1].split()[1:] == ["weather", "sky=grey"]
    assert tail[2].split()[1:3] == ["complete", "ghost#7"]
    p = cli("logs", rid, "flaky", cwd=copy, state=copy)
    assert p.returncode == 0 and "escalated" in p.stdout and ESC not in p.stdout


def test_follow_prints_records_as_they_come_until_the_run_ends(tmp_path: Path) -> None:
    proj = project(tmp_path)
    (proj / "p.yaml").write_text("""\
name: slowpoke
tasks:
  first:
    command: [sh, -c, "echo one"]
  gate:
    needs: first
    command: [sh, -c, 'while [ ! -f "$AGENTCTL_WORKSPACE/go" ]; do sleep 0.05; done; echo opened']
  last:
    needs: gate
    command: [sh, -c, "echo done"]
""")
    state = tmp_path / "state"
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "agentctl", "run", "p.yaml", "--run-id", "f-1"],
                              cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    follower = None
    try:
        wal = state / "runs" / "f-1" / "wal.jsonl"
        _wait(lambda: wal.exists(), "the run to start")
        follower = subprocess.Popen([sys.executable, "-m", "agentctl", "logs", "f-1", "--follow"],
                                    cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        assert follower.stdout is not None
        seen = []
        while not any("start" in ln and "gate#1" in ln for ln in seen):
            line = follower.stdout.readline()
            assert line, f"follow ended early: {seen}"
            seen.append(line)
        # the run is held by its driver; reading needs no lock
        p = cli("logs", "f-1", cwd=proj, state=state)
        assert p.returncode == 0 and "gate#1" in p.stdout and "end " not in p.stdout
        assert follower.poll() is None  # still following
        (proj / "go").write_text("")
        rest, err = follower.communicate(timeout=120)
        assert follower.returncode == 0, err
        lines = [*seen, *rest.splitlines(keepends=True)]
        assert [ln.split()[1] for ln in lines][-4:] == ["complete", "start", "complete", "end"]
        assert lines[-1].split()[1:] == ["end", "status=complete"]
        assert len(lines) == len(store.scan_wal(wal).records)  # every record, once
        assert driver.wait(timeout=120) == 0
    finally:
        for proc in (follower, driver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if driver.stderr:
            driver.stderr.close()


def test_follow_on_a_finished_run_prints_it_and_stops(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    p = cli("logs", rid, "--follow", cwd=proj, state=state)
    assert p.returncode == 0
    assert p.stdout == cli("logs", rid, cwd=proj, state=state).stdout
    p = cli("logs", rid, "flaky", "-f", cwd=proj, state=state)
    assert p.returncode == 0
    assert {ln.split()[2].split("#")[0] for ln in p.stdout.splitlines()[1:-1]} == {"flaky"}


def test_follow_stops_when_nobody_drives_the_run(run: tuple[Path, Path, str], tmp_path: Path) -> None:
    proj, state, rid = run
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    rd = store.StateDir(copy).run(rid)
    lines = rd.wal.read_bytes().splitlines(keepends=True)
    rd.wal.write_bytes(b"".join(lines[:-1]))  # as if the driver died before run_ended
    p = cli("logs", rid, "--follow", cwd=proj, state=copy)
    assert p.returncode == 0
    assert "end " not in p.stdout
    assert p.stderr == (f"agentctl: no driver is running run {rid}; continue it with "
                        f"`agentctl resume {rid}`\n")


def test_logs_never_imports_litellm(run: tuple[Path, Path, str]) -> None:
    proj, state, rid = run
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state)}
    for args in (["logs", rid], ["logs", rid, "ask"]):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentctl", *args], cwd=proj,
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0
        assert "litellm" not in p.stderr


def _wait(pred: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_job(proj: Path, script: str) -> None:
    """p.yaml: one command task, ``job``, running ``sh -c script``, never retried."""
    (proj / "p.yaml").write_text("name: one-job\ndefaults: {retries: 0}\ntasks:\n  job:\n"
                                 f"    command: {json.dumps(['sh', '-c', script])}\n")


def test_an_agents_own_files_are_shown_and_a_stray_output_json_is_not_taken_for_a_report(
        tmp_path: Path) -> None:
    """$AGENTCTL_OUTPUT's directory is the task's: what an agent leaves there is shown, as
    not agentctl's, and an output.json the WAL has no report for is not called committed."""
    proj = project(tmp_path)
    one_job(proj, 'd=$(dirname "$AGENTCTL_OUTPUT"); echo "notes of attempt $AGENTCTL_ATTEMPT" > "$d/notes.txt"; '
                  'echo "{\\"fake\\": 1}" > "$d/output.json"; ln -s "$AGENTCTL_WORKSPACE/elsewhere.txt" "$d/link.txt"; '
                  'ln -s "$AGENTCTL_WORKSPACE/elsewhere.txt" "$d/attempt-1.link.txt"; exit 3')
    (proj / "elsewhere.txt").write_text("a file outside the state directory\n")
    state = tmp_path / "state"
    assert cli("run", "p.yaml", "--run-id", "s1", cwd=proj, state=state).returncode == 1
    out = cli("logs", "s1", "job", cwd=proj, state=state).stdout
    tdir = state / "runs" / "s1" / "tasks" / "job"
    assert f"== notes.txt, not agentctl's ({tdir / 'notes.txt'})\nnotes of attempt 1\n" in out
    assert f"== output.json, not a committed report: the WAL has none ({tdir / 'output.json'})" in out
    assert "committed report" not in out.replace("not a committed report", "")
    assert "outside the state directory" not in out  # a link the agent left is not followed


def _wait(pred: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_slow_first_model_call_has_its_prompt_on_disk_while_out_and_after_a_kill(
        tmp_path: Path) -> None:
    """exchange.json is written once a call has been out for a beat (0.25 s), marked
    running: `logs` shows the conversation as sent and `trace` its hash, live and after the
    driver is SIGKILLed mid-call."""
    proj = project(tmp_path)
    (proj / "p.yaml").write_text("""\
name: slowllm
defaults: {retries: 0, model: "offline/echo?latency=60s"}
tasks:
  ask:
    skill: writer
    with: {angle: api}
""")
    state = tmp_path / "state"
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1"}
    drv = subprocess.Popen([sys.executable, "-m", "agentctl", "run", "p.yaml", "--run-id", "r1"],
                           cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    exchange = state / "runs" / "r1" / "tasks" / "ask" / "attempt-1.exchange.json"
    try:
        _wait(exchange.exists, "the running exchange.json")
        assert drv.poll() is None  # the call is still out
        ex = json.loads(exchange.read_text())
        assert ex["outcome"] == "running" and ex["calls"] == []
        assert [m["role"] for m in ex["messages"]] == ["system", "user"]
        live = cli("logs", "r1", "ask", cwd=proj, state=state).stdout
        assert f"== conversation ({exchange})" in live and "--- 1 system\nWrite the note, please." in live
    finally:
        os.killpg(drv.pid, signal.SIGKILL)
        drv.wait(timeout=30)
    trace = cli("trace", "r1", "ask", cwd=proj, state=state).stdout
    assert "  prompt   sha256:" in trace and f"{exchange} (messages 1-2)" in trace


def test_a_secret_in_a_file_an_agent_left_is_masked_by_logs(tmp_path: Path) -> None:
    """Its stdout is masked as it is captured; a file it leaves beside its report is as the
    agent wrote it, and `logs` masks it as it shows it."""
    key = "sk-proj-" + "0123456789abcdef" * 3
    proj = project(tmp_path)
    one_job(proj, 'd=$(dirname "$AGENTCTL_OUTPUT"); echo "key=$OPENAI_API_KEY" > "$d/notes.txt"; '
                  'echo "key=$OPENAI_API_KEY"')
    state = tmp_path / "state"
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1", "OPENAI_API_KEY": key}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agentctl", *args], cwd=proj, env=env,
                              capture_output=True, text=True, timeout=120)

    assert run("run", "p.yaml", "--run-id", "l1").returncode == 0
    out = run("logs", "l1", "job").stdout
    notes = out.split("== notes.txt, not agentctl's (")[1].split("\n== ")[0]
    assert notes.split("\n", 1)[1].startswith("key=[REDACTED]\n")  # the file, masked as shown
    assert "key=[REDACTED]" in out.split("== stdout (")[1].split("\n== ")[0]  # as captured
    assert key not in out
