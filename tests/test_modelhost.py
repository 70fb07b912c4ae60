"""The model host (agentctl/runners/modelhost.py): litellm's calls in a process beside the
driver. The driver never loads litellm; a host that dies costs a retry, not the run; a driver
that dies, however it dies, leaves no host behind; a host is replaced when the environment it
was started with changes. Real drivers, real hosts, real signals."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import REPO, Project, gone, wait_for
from llmkit import LLMProject
from test_llm_perf import _attempt, _run

from agentctl.runners import llm
from agentctl.runners.base import Outcome
from agentctl.runners.modelhost import HostClient, _Lines


def model_hosts(parent: int) -> list[int]:
    """Pids of the live model hosts whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == parent and b"agentctl.runners.modelhost" in cmdline and not gone(int(entry)):
            found.append(int(entry))
    return found


def loaded_litellm(pid: int) -> bool:
    """Whether the process has litellm's native dependencies mapped (tiktoken, tokenizers)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "tiktoken" in maps or "tokenizers" in maps


def started(project: Project, run_id: str, task: str = "a") -> bool:
    wal = project.state / "runs" / run_id / "wal.jsonl"
    return wal.exists() and any(r["type"] == "attempt_started" and r["task"] == task
                                for r in project.wal(run_id))


def one_task(tmp_path: Path, model: str) -> Path:
    return LLMProject(tmp_path).pipeline({"a": {"model": model}})


@pytest.fixture
def hosted(project: Project) -> Project:
    """The project's drivers use a model host whatever this machine's CPUs (by default a
    driver that may use one CPU keeps litellm in itself)."""
    project.env["AGENTCTL_MODEL_HOST"] = "1"
    return project


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostClient]:
    """This process's llm runner calls through a host of its own, stopped afterwards."""
    client = HostClient()
    monkeypatch.setattr(llm, "_client", client)
    try:
        yield client
    finally:
        client.stop()


def test_litellm_runs_in_the_host_never_in_the_driver(hosted: Project, tmp_path: Path) -> None:
    project = hosted
    driver = project.spawn("run", str(one_task(tmp_path, "offline/slow?latency=60s")),
                           "--run-id", "r1")
    [host] = wait_for(lambda: model_hosts(driver.pid), "the model host")
    wait_for(lambda: loaded_litellm(host), "litellm in the host", timeout=120)
    wait_for(lambda: started(project, "r1"), "the attempt")
    assert not loaded_litellm(driver.pid)
    driver.proc.send_signal(signal.SIGTERM)
    assert driver.wait() == 130, driver.describe()
    assert gone(host)


def test_a_host_killed_mid_call_costs_a_retry_and_the_run_completes(
        hosted: Project, tmp_path: Path) -> None:
    project = hosted
    p = one_task(tmp_path, "offline/slow?latency=2s&retries=2&backoff=10ms")
    driver = project.spawn("run", str(p), "--run-id", "r1")
    [host] = wait_for(lambda: model_hosts(driver.pid), "the model host")
    # A call out for 0.25 s has the exchange written (`running`): the call is in the host.
    exchange = project.state / "runs" / "r1" / "tasks" / "a" / "attempt-1.exchange.json"
    wait_for(exchange.exists, "the call", timeout=120)
    os.kill(host, signal.SIGKILL)
    assert driver.wait() == 0, driver.describe()
    ex = json.loads(project.run_dir("r1").attempt_file("a", 1, "exchange.json").read_text())
    failed, answered = ex["calls"]
    assert failed["error"] == {"kind": "connection", "retryable": True,
                               "message": "the model host process ended (killed by signal 9)"}
    assert answered["error"] is None and answered["response"]["content"]
    assert ex["outcome"] == "report"
    assert [r["type"] for r in project.wal("r1")].count("llm_call") == 1


def test_a_driver_killed_alone_leaves_no_host_behind(hosted: Project, tmp_path: Path) -> None:
    project = hosted
    driver = project.spawn("run", str(one_task(tmp_path, "offline/slow?latency=60s")),
                           "--run-id", "r1")
    [host] = wait_for(lambda: model_hosts(driver.pid), "the model host")
    wait_for(lambda: started(project, "r1") and loaded_litellm(host), "the call", timeout=120)
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone, not its process group
    driver.wait()
    # Its call would take a minute more: the host ends it on losing its driver.
    wait_for(lambda: gone(host), "the host to exit on its own", timeout=50)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_is_the_drivers_to_handle(
        hosted: Project, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C on a terminal, `timeout`, `kill -TERM -PGID`, a service manager's stop: the run
    ends interrupted, its call put back for resume, not failed because the host died of the
    same signal; no host is started while the driver ends, and none is left."""
    project = hosted
    p = one_task(tmp_path, "offline/slow?latency=3s&retries=2&backoff=10ms")
    driver = project.spawn("run", str(p), "--run-id", "r1")
    [host] = wait_for(lambda: model_hosts(driver.pid), "the model host")
    exchange = project.state / "runs" / "r1" / "tasks" / "a" / "attempt-1.exchange.json"
    wait_for(exchange.exists, "the call", timeout=120)  # out for a beat: in the host
    os.killpg(driver.pid, sig)
    hosts = {host}
    while driver.poll() is None:
        hosts.update(model_hosts(driver.pid))
    assert driver.wait() == 130, driver.describe()
    assert hosts == {host}, "a model host was started while the driver was ending"
    assert gone(host)
    assert "Traceback" not in driver.stderr, driver.stderr
    state = project.replay("r1")
    assert state.status == "interrupted" and state.tasks["a"].status != "failed"
    ex = json.loads(exchange.read_text())
    assert [c["error"] for c in ex["calls"]] == [None] or ex["outcome"] == "cancelled", ex
    assert all(c["error"] is None or "model host" not in c["error"]["message"]
               for c in ex["calls"]), ex["calls"]
    r = project.cli("resume", "r1", timeout=180)
    assert r.returncode == 0, r.stderr
    assert project.replay("r1").tasks["a"].status == "complete"


def test_a_broken_litellm_is_one_line_and_the_task_fails_naming_it(
        hosted: Project, tmp_path: Path) -> None:
    project = hosted
    broken = tmp_path / "broken"
    (broken / "litellm").mkdir(parents=True)
    (broken / "litellm" / "__init__.py").write_text("raise ImportError('broken for a test')\n")
    project.env["PYTHONPATH"] = str(broken)
    r = project.cli("run", str(one_task(tmp_path, "offline/echo?retries=1&backoff=10ms")),
                    "--run-id", "r1")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "agentctl: model host: cannot import litellm: ImportError: broken for a test" in r.stderr
    [row] = project.status("r1")["tasks"]
    assert row["status"] == "failed" and row["error"]["category"] == "provider_error"
    assert row["error"]["message"].endswith(
        "last error: the model host process ended (exit code 1)"), row["error"]
    # A model that needs a key is checked before the run, by the host: it says so, in one line.
    project.env["OPENAI_API_KEY"] = "sk-test-" + "k" * 24
    r = project.cli("run", str(one_task(tmp_path / "online", "openai/gpt-4o-mini")))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "agentctl: error: the model host process ended (exit code 1) before it answered")


def test_one_host_per_environment(host: HostClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def pid() -> int:
        return int(asyncio.run(host.status())["pid"])

    first = pid()
    assert pid() == first  # a new event loop, the same environment: the same host
    monkeypatch.setenv("AGENTCTL_TEST_HOST_ENV", "changed")
    second = pid()
    assert second != first and gone(first)
    assert int(asyncio.run(host.status())["pid"]) == second


def test_a_driver_on_one_cpu_keeps_litellm_in_itself(project: Project, tmp_path: Path) -> None:
    """Two processes on one CPU take turns on it: there the host is pure cost, so the driver
    does without it unless told otherwise."""
    mask = os.sched_getaffinity(0)
    project.env["AGENTCTL_TEST_PAUSE_AFTER_CALL"] = "600"  # so it is still running to look at
    for setting, hosts in (("", 0), ("1", 1)):
        project.env["AGENTCTL_MODEL_HOST"] = setting
        os.sched_setaffinity(0, {min(mask)})  # what the driver inherits
        try:
            driver = project.spawn("run", str(one_task(tmp_path / f"h{setting}", "offline/echo")),
                                   "--run-id", f"r{setting or 'auto'}")
        finally:
            os.sched_setaffinity(0, mask)
        wal = project.state / "runs" / f"r{setting or 'auto'}" / "wal.jsonl"
        wait_for(lambda w=wal: w.exists() and b'"llm_call"' in w.read_bytes(), "the call",
                 timeout=120)
        assert len(model_hosts(driver.pid)) == hosts, setting
        assert loaded_litellm(driver.pid) == (hosts == 0)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def test_beats_go_on_while_a_fallbacks_question_waits_for_a_new_host(
        host: HostClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host dies under a call; the next model of the chain needs the host's word on it
    (JSON mode, its key), from a new host still importing litellm: beats go on meanwhile."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "k" * 24)
    beats: list[float] = []
    chain = ["offline/slow?latency=60s&retries=0",
             "openai/gpt-4o-mini?api_base=http://127.0.0.1:9/v1&retries=0"]
    exchange = tmp_path / "attempt" / "attempt-1.exchange.json"

    async def go() -> Outcome:
        loop = asyncio.get_running_loop()
        a = dataclasses.replace(_attempt(tmp_path, chain[0]), models=chain,
                                beat=lambda: beats.append(loop.time()))
        task = asyncio.ensure_future(llm.LLMRunner().run(a))
        while not exchange.exists():  # the slow call has been out for a beat: in the host
            await asyncio.sleep(0.05)
        assert host.pid is not None
        os.kill(host.pid, signal.SIGKILL)  # the OOM killer, say
        return await task

    out = _run(go)
    assert out.report is None  # nothing listens on port 9
    ex = json.loads(exchange.read_text())
    assert [c["model"] for c in ex["calls"]] == chain
    assert ex["calls"][0]["error"]["message"] == "the model host process ended (killed by signal 9)"
    assert max(b - a for a, b in itertools.pairwise(beats)) < 3 * llm.BEAT_EVERY_S


def test_an_installed_agentctl_runs_its_host_without_shadowing_the_standard_library(
        tmp_path: Path) -> None:
    """agentctl installed as a wheel installs it: in site-packages, where a module named like
    one of the standard library's may lie too (old PyPI backports: uuid, pathlib)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site] = list(venv.glob("lib/python3*/site-packages"))
    shutil.copytree(REPO / "agentctl", site / "agentctl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    deps = next(p for p in sys.path if p.endswith("site-packages"))  # this venv's packages
    (site / "deps.pth").write_text(deps + "\n")
    (site / "uuid.py").write_text("raise ImportError('a stray uuid.py shadowed the stdlib')\n")
    p = one_task(tmp_path, "offline/echo")
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "agentctl", "run", str(p),
                        "--state-dir", str(tmp_path / "state")], cwd=tmp_path,
                       env={**os.environ, "AGENTCTL_MODEL_HOST": "1", "AGENTCTL_PLAIN": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1/1 complete" in r.stdout


def test_lines_longer_than_a_read_arrive_whole_and_in_order() -> None:
    """A request or reply of megabytes (a large prompt) comes in many reads of 64 KiB; each
    line is handed on whole, once, in order, however the writes cut it."""
    got: list[dict[str, object]] = []
    ended: list[bool] = []
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    lines = _Lines(r1, w2, got.append, lambda: ended.append(True))
    msgs = [{"id": 1, "text": "é" * 3_000_000}, {"id": 2, "text": "short"},
            {"id": 3, "text": "x" * 200_000}]
    data = b"".join(json.dumps(m).encode() + b"\n" for m in msgs)

    def write() -> None:
        for start in range(0, len(data), 10_007):  # cuts fall inside lines and between them
            os.write(w1, data[start:start + 10_007])
        os.close(w1)

    writer = threading.Thread(target=write)
    writer.start()
    assert lines.read_sync(lambda: bool(ended), timeout=120)
    writer.join()
    assert got == msgs and ended == [True]
    lines.close()
    os.close(r2)
