"""Liveness (DESIGN.md 6.5): heartbeats, stale tasks, timeouts, a crashed driver."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from typing import Any

import pytest
from harness import Project, gone, wait_for


def ended(project: Project, run_id: str, task: str) -> list[dict[str, Any]]:
    return [r for r in project.wal(run_id) if r["type"] == "attempt_ended" and r["task"] == task]


def pids(project: Project) -> list[int]:
    rows = [json.loads(line) for line in (project.root / "pids").read_text().splitlines()]
    return [p for row in rows for p in (row["agent"], row["child"])]


def test_a_hung_agent_goes_stale_its_group_is_stopped_and_it_is_retried(project: Project) -> None:
    # Attempt 1 beats three times, then hangs in silence with a child; attempt 2 behaves.
    project.behave("hung", hang_attempts=[1], pids_file=str(project.root / "pids"))
    project.pipeline({"hung": {"heartbeat": "200ms", "retries": 1, "effects": "read-only"},
                      "after": {"needs": "hung", "effects": "read-only"}},
                     defaults={"backoff": "100ms"})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stderr

    first, second = ended(project, "r1", "hung")
    assert (first["attempt"], first["outcome"], first["category"]) == (1, "failed", "stale")
    assert first["retry"] is True
    assert "heartbeat" in first["message"]
    assert (second["attempt"], second["outcome"]) == (2, "complete")
    agent, child = pids(project)
    assert gone(agent) and gone(child)  # the whole process group was stopped
    assert [e["attempt"] for e in project.executions("hung")] == [1, 2]
    rows = {t["id"]: t for t in project.status("r1")["tasks"]}
    assert (rows["hung"]["status"], rows["hung"]["attempts"]) == ("complete", 2)
    assert rows["after"]["status"] == "complete"


@pytest.mark.parametrize("how", ["touch", "output"])
def test_a_beating_agent_is_not_stale_however_long_it_runs(project: Project, how: str) -> None:
    gate = project.root / "gate"
    if how == "touch":
        project.behave("busy", gate=str(gate))  # touches $AGENTCTL_HEARTBEAT every 20 ms
    else:
        project.behave("busy", chatter=2.0)  # prints a line every 50 ms, never touches it
    project.pipeline({"busy": {"heartbeat": "200ms", "retries": 1, "effects": "read-only"}})
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    wait_for(lambda: project.running("r1", "busy"), "'busy' to start")
    time.sleep(1.2)  # more than 3 intervals of 200 ms: only the beats keep it alive
    data = project.status("r1")
    assert data["status"] == "running" and data["driver"]["alive"] is True
    assert data["tasks"][0]["status"] == "running"
    assert data["tasks"][0]["heartbeat_age_s"] is not None
    gate.touch()
    assert driver.wait() == 0, driver.describe()
    assert ended(project, "r1", "busy")[0]["outcome"] == "complete"
    assert len(project.executions("busy")) == 1


def test_a_timeout_stops_the_whole_process_group(project: Project) -> None:
    # The agent's child ignores SIGTERM: only the SIGKILL after the grace period stops it.
    project.behave("slow", hang_attempts=[1], child_ignores_term=True,
                   pids_file=str(project.root / "pids"))
    project.pipeline({"slow": {"timeout": "1s", "effects": "read-only"},
                      "after": {"needs": "slow", "effects": "read-only"}})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stderr

    (only,) = ended(project, "r1", "slow")
    assert (only["outcome"], only["category"]) == ("failed", "timeout")
    agent, child = wait_for(lambda: pids(project), "the agent's pids")
    wait_for(lambda: gone(agent) and gone(child), "the agent and its child to be gone", timeout=30)
    rows = {t["id"]: t for t in project.status("r1")["tasks"]}
    assert rows["slow"]["status"] == "failed"
    assert rows["slow"]["error"]["category"] == "timeout"
    assert "timed out after 1s" in rows["slow"]["error"]["message"]
    assert rows["after"]["status"] == "skipped"


def test_status_of_a_run_whose_driver_was_killed(project: Project) -> None:
    gate = project.root / "gate"
    project.behave("slow", gate=str(gate))
    project.pipeline({"first": {"effects": "read-only"},
                      "slow": {"needs": "first", "heartbeat": "1s", "effects": "read-only"},
                      "last": {"needs": "slow", "effects": "read-only"}})
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    wait_for(lambda: project.running("r1", "slow"), "'slow' to start")
    (orphan,) = [e["pid"] for e in project.executions("slow")]
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL

    data = project.status("r1")
    assert data["status"] == "crashed"
    assert data["driver"]["pid"] == driver.pid and data["driver"]["alive"] is False
    rows = {t["id"]: t for t in data["tasks"]}
    assert rows["first"]["status"] == "complete"
    assert rows["slow"]["status"] == "stale"  # in flight, and nobody is driving it
    assert rows["slow"]["attempts"] == 1
    assert rows["slow"]["heartbeat_age_s"] is not None
    assert rows["last"]["status"] == "pending"
    listing = project.status()["runs"]
    assert [(r["run_id"], r["status"]) for r in listing] == [("r1", "crashed")]
    text = project.cli("status", "r1")
    assert text.returncode == 0 and "agentctl resume r1" in text.stdout

    # The orphaned agent is still running (it leads its own process group); resume stops it
    # before running the task again.
    assert not gone(orphan)
    resumed = project.spawn("resume", "r1")
    wait_for(lambda: gone(orphan), "the orphaned agent to be stopped", timeout=30)
    gate.touch()
    assert resumed.wait() == 0, resumed.describe()
    assert "stopped 1 agent process group" in resumed.stderr
    assert project.status("r1")["status"] == "complete"
    assert [e["attempt"] for e in project.executions("slow")] == [1, 2]


def test_an_agent_that_exits_is_done_even_if_a_child_holds_its_output_open(
        project: Project) -> None:
    # A daemon left behind inherits the agent's stdout and stderr pipes. The attempt ends
    # when the agent exits, not when the last holder of its pipes does.
    project.behave("bg", leave_child=True, pids_file=str(project.root / "pids"))
    project.pipeline({"bg": {"timeout": "20s", "effects": "read-only"},
                      "after": {"needs": "bg", "effects": "read-only"}})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, (r.stdout, r.stderr)
    (only,) = ended(project, "r1", "bg")
    assert only["outcome"] == "complete", only


def test_a_timed_out_agent_gets_its_grace_period_to_clean_up(project: Project) -> None:
    """SIGTERM first, then the grace period, then SIGKILL: an agent that traps TERM and needs
    a moment to clean up gets it (its cleanup runs), and nothing of it is left running."""
    marker = project.root / "cleaned"
    script = (f'trap \'sleep 0.4; echo done > "{marker}"; exit 143\' TERM; '
              f'echo $$ > "{project.root / "agent.pid"}"; sleep 30 & wait')
    project.pipeline({"slow": {"command": ["sh", "-c", script], "timeout": "1s",
                               "effects": "read-only"}})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ResourceWarning" not in r.stderr
    (end,) = ended(project, "r1", "slow")
    assert end["category"] == "timeout"
    assert marker.read_text().strip() == "done"  # the cleanup ran before any SIGKILL
    assert gone(int((project.root / "agent.pid").read_text()))


def test_heartbeat_age_counts_from_the_attempts_start_until_its_first_beat(project: Project) -> None:
    # The heartbeat file is made at an attempt's first beat, not when it starts. Until then
    # (and over a file an earlier attempt left, however old) `status` counts from the start.
    project.behave("quiet", chatter=30.0)  # prints (a sign of life for the driver), never touches it
    project.pipeline({"quiet": {"heartbeat": "10s", "effects": "read-only"}})
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    try:
        wait_for(lambda: project.running("r1", "quiet"), "'quiet' to start")
        beat_file = project.run_dir("r1").heartbeat_file("quiet")
        hour_ago = time.time() - 3600
        beat_file.touch()
        os.utime(beat_file, (hour_ago, hour_ago))  # as if an attempt of an hour ago left it
        (row,) = project.status("r1")["tasks"]
        assert row["status"] == "running"  # not stale: 3600 s is far over 3 beats of 10 s
        assert row["heartbeat_age_s"] is not None and row["heartbeat_age_s"] < 30
        beat_file.unlink()  # no file at all: the same
        (row,) = project.status("r1")["tasks"]
        assert row["status"] == "running"
        assert row["heartbeat_age_s"] is not None and row["heartbeat_age_s"] < 30
    finally:
        os.kill(driver.pid, signal.SIGINT)  # Ctrl-C: stops the agent, ends the run (130)
        assert driver.wait() == 130, driver.describe()


@pytest.mark.parametrize("how", ["utime", "touch -c", "touch with umask 022"])
def test_a_command_agent_finds_its_heartbeat_file_made_and_private(project: Project, how: str) -> None:
    # An agent may beat by setting the file's time (utime, `touch -c`): it must exist when
    # the agent starts, and stay the driver's (0600) whatever the agent's umask.
    cmd = {
        "utime": ["python3", "-c", "import os, time\nfor _ in range(4):\n"
                  "    os.utime(os.environ['AGENTCTL_HEARTBEAT']); time.sleep(0.4)"],
        "touch -c": ["sh", "-c", 'for i in 1 2 3 4; do touch -c "$AGENTCTL_HEARTBEAT"; sleep 0.4; done'],
        "touch with umask 022": ["sh", "-c", 'umask 022; touch "$AGENTCTL_HEARTBEAT"'],
    }[how]
    project.pipeline({"a": {"command": cmd, "heartbeat": "500ms", "effects": "read-only"}})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stderr
    assert ended(project, "r1", "a")[0]["outcome"] == "complete"
    beat = project.run_dir("r1").heartbeat_file("a")
    assert stat.S_IMODE(beat.stat().st_mode) == 0o600
