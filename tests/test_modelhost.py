"""The model host (agentctl/runners/modelhost.py): litellm's calls in a process beside the
driver. The driver never loads litellm; a host that dies costs a retry, not the run; a driver
that dies, however it dies, leaves no host behind; a host is replaced when the environment it
was started with changes. Real drivers, real hosts, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from harness import Project, gone, wait_for
from llmkit import LLMProject

from agentctl.runners import llm
from agentctl.runners.modelhost import HostClient


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


def test_litellm_runs_in_the_host_never_in_the_driver(project: Project, tmp_path: Path) -> None:
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
        project: Project, tmp_path: Path) -> None:
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


def test_a_driver_killed_alone_leaves_no_host_behind(project: Project, tmp_path: Path) -> None:
    driver = project.spawn("run", str(one_task(tmp_path, "offline/slow?latency=60s")),
                           "--run-id", "r1")
    [host] = wait_for(lambda: model_hosts(driver.pid), "the model host")
    wait_for(lambda: started(project, "r1") and loaded_litellm(host), "the call", timeout=120)
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone, not its process group
    driver.wait()
    # Its call would take a minute more: the host ends it on losing its driver.
    wait_for(lambda: gone(host), "the host to exit on its own", timeout=50)


def test_ctrl_c_to_the_process_group_is_the_drivers_to_handle(
        project: Project, tmp_path: Path) -> None:
    driver = project.spawn("run", str(one_task(tmp_path, "offline/slow?latency=60s")),
                           "--run-id", "r1")
    [host] = wait_for(lambda: model_hosts(driver.pid), "the model host")
    wait_for(lambda: started(project, "r1") and loaded_litellm(host), "the call", timeout=120)
    os.killpg(driver.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    assert driver.wait() == 130, driver.describe()
    assert gone(host)
    assert "Traceback" not in driver.stderr, driver.stderr
    assert project.replay("r1").status == "interrupted"


def test_a_broken_litellm_is_one_line_and_the_task_fails_naming_it(
        project: Project, tmp_path: Path) -> None:
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


def test_one_host_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    host = llm.client()
    assert isinstance(host, HostClient)

    def pid() -> int:
        return int(asyncio.run(host.status())["pid"])

    first = pid()
    assert pid() == first  # a new event loop, the same environment: the same host
    monkeypatch.setenv("AGENTCTL_TEST_HOST_ENV", "changed")
    second = pid()
    assert second != first and gone(first)
    assert int(asyncio.run(host.status())["pid"]) == second
