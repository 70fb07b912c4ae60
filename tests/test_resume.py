"""Resume (DESIGN.md 5-6): frozen definitions, Ctrl-C, in-flight effects, --retry-failed,
skips, status during a run, file modes, and what `status` imports."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from filelock import FileLock, Timeout
from harness import PY, Project, check_run_files, gone, wait_for

SKILL = """---
name: helper
description: Helps. Use in tests.
---
{body}
The rest of the prompt.
"""


def kill_driver_when(project: Project, run_id: str, *tasks: str) -> int:
    """Start ``run``, wait until ``tasks`` are all in flight, SIGKILL the driver alone."""
    driver = project.spawn("run", "p.yaml", "--run-id", run_id)
    wait_for(lambda: all(project.running(run_id, t) for t in tasks), f"{tasks} to be running")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    return driver.pid


def attempts(project: Project, task: str) -> list[int]:
    return [e["attempt"] for e in project.executions(task)]


def test_definitions_changed_between_crash_and_resume(project: Project) -> None:
    gate = project.root / "gate"
    skill = project.root / "skills" / "helper" / "SKILL.md"
    skill.parent.mkdir(parents=True)
    skill.write_text(SKILL.format(body="OLD-SKILL-BODY"))
    project.behave("slow", gate=str(gate))
    pipeline = project.pipeline({
        "first": {"command": project.agent("v1"), "effects": "read-only"},
        "slow": {"command": project.agent("v1"), "skill": "helper", "needs": "first",
                 "effects": "read-only"},
        "last": {"command": project.agent("v1"), "skill": "helper", "needs": "slow",
                 "effects": "read-only"},
    })
    kill_driver_when(project, "r1", "slow")

    pipeline.write_text(pipeline.read_text().replace("v1", "v2"))
    skill.write_text(SKILL.format(body="NEW-SKILL-BODY"))
    gate.touch()
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stderr
    assert "definitions changed on disk" in r.stderr
    assert f"{pipeline} has changed" in r.stderr
    assert f"{skill} has changed" in r.stderr
    assert "frozen copy" in r.stderr
    # What ran after the resume ran from the frozen copy: old argument, old skill.
    after = [e for e in project.executions() if e["task"] != "first"]
    assert [(e["task"], e["attempt"]) for e in after] == [("slow", 1), ("slow", 2), ("last", 1)]
    assert {e["tag"] for e in project.executions()} == {"v1"}
    assert {e["prompt"] for e in after} == {"OLD-SKILL-BODY"}
    assert "v2" in pipeline.read_text()  # the user's file is left as they wrote it


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_cleanly_and_resume_continues(project: Project, sig: int) -> None:
    gate = project.root / "gate"
    for t in ("c", "d"):
        project.behave(t, gate=str(gate), effect=True, effect_first=True)
    project.pipeline({
        "a": {"effects": "read-only"}, "b": {"effects": "mutating"},
        "c": {"needs": ["a", "b"], "effects": "mutating"},
        "d": {"needs": "a", "effects": "read-only"},
        "e": {"needs": ["c", "d"], "effects": "read-only"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    wait_for(lambda: project.running("r1", "c") and project.running("r1", "d"), "c and d")
    agents = [e["pid"] for e in project.executions() if e["task"] in ("c", "d")]
    os.kill(driver.pid, sig)  # Ctrl-C (or a polite kill)
    assert driver.wait() == 130, driver.describe()
    assert "agentctl resume r1" in driver.stderr
    assert "Traceback" not in driver.stderr

    # The driver stopped its agents and logged it before exiting.
    assert all(gone(pid) for pid in agents)
    records = project.wal("r1")
    assert records[-1]["type"] == "run_ended" and records[-1]["status"] == "interrupted"
    stopped = {r["task"]: r for r in records if r["type"] == "attempt_ended"
               and r["outcome"] == "abandoned"}
    assert set(stopped) == {"c", "d"}
    assert {r["category"] for r in stopped.values()} == {"cancelled"}
    data = project.status("r1")
    assert data["status"] not in ("running", "crashed")
    assert {t["id"]: t["status"] for t in data["tasks"]} == {
        "a": "complete", "b": "complete", "c": "pending", "d": "pending", "e": "pending"}

    gate.touch()
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stderr
    assert {t: attempts(project, t) for t in "abcde"} == {
        "a": [1], "b": [1], "c": [1, 2], "d": [1, 2], "e": [1]}
    assert len({e["key"] for e in project.executions("c")}) == 1
    assert len(project.effects_of("c")) == 1
    check_run_files(project.run_dir("r1"))


def test_in_flight_tasks_are_treated_by_their_effects(project: Project) -> None:
    gate = project.root / "gate"
    for t in ("ro", "mut", "irr"):
        project.behave(t, gate=str(gate), effect=True, effect_first=True)
    project.pipeline({
        "ro": {"effects": "read-only"},
        "mut": {"effects": "mutating"},
        "irr": {"effects": "irreversible"},
        "after": {"needs": ["ro", "mut", "irr"], "effects": "read-only"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    wait_for(lambda: project.running("r1", "ro") and project.running("r1", "mut"), "ro and mut")
    # An irreversible task always waits for a person first.
    wait_for(lambda: project.replay("r1").tasks["irr"].status == "waiting_approval", "approval")
    ok = project.cli("approve", "r1", "irr")
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: project.running("r1", "irr"), "irr to be running")
    orphans = [e["pid"] for e in project.executions()]
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL

    resumed = project.spawn("resume", "r1")
    wait_for(lambda: all(gone(p) for p in orphans), "resume to stop the orphaned agents")
    gate.touch()
    assert resumed.wait() == 4, resumed.describe()  # waits for a person
    assert "needs review" in resumed.stderr and "irr" in resumed.stderr

    assert attempts(project, "ro") == [1, 2]  # read-only: run again
    mut = project.executions("mut")
    assert [e["attempt"] for e in mut] == [1, 2]  # mutating: run again, same key
    started = [r for r in project.wal("r1") if r["type"] == "attempt_started" and r["task"] == "mut"]
    assert {e["key"] for e in mut} == {r["key"] for r in started} and len(started) == 2
    assert len({e["key"] for e in mut}) == 1
    assert len(project.effects_of("mut")) == 1
    assert attempts(project, "irr") == [1]  # irreversible: never run again by itself
    rows = {t["id"]: t for t in project.status("r1")["tasks"]}
    assert rows["irr"]["status"] == "needs_review"
    assert "irreversible" in rows["irr"]["error"]["message"]
    assert rows["after"]["status"] == "pending"
    assert project.status("r1")["status"] == "paused"


def test_a_failed_task_skips_its_dependents_and_retry_failed_runs_them(project: Project) -> None:
    flag = project.root / "fixed"
    project.behave("flaky", fail_unless=str(flag))
    project.pipeline({
        "ok": {"effects": "read-only"},
        "flaky": {"effects": "read-only"},
        "child": {"needs": "flaky", "effects": "read-only"},
        "grandchild": {"needs": "child", "effects": "read-only"},
        "other": {"needs": "ok", "effects": "read-only"},
    })
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stderr
    rows = {t["id"]: t for t in project.status("r1")["tasks"]}
    assert rows["flaky"]["status"] == "failed"
    assert rows["flaky"]["error"]["category"] == "command_failed"
    assert "is missing" in rows["flaky"]["error"]["message"]  # the agent's last stderr line
    assert rows["child"]["status"] == "skipped"
    assert rows["child"]["error"] == {"category": "upstream_failed",
                                      "message": "needs 'flaky', which failed"}
    assert rows["grandchild"]["status"] == "skipped"
    assert "'flaky'" in rows["grandchild"]["error"]["message"]
    assert (rows["ok"]["status"], rows["other"]["status"]) == ("complete", "complete")

    again = project.cli("resume", "r1")  # nothing changed: the same verdict, nothing re-run
    assert again.returncode == 1, again.stderr
    assert attempts(project, "flaky") == [1]

    flag.touch()
    fixed = project.cli("resume", "r1", "--retry-failed")
    assert fixed.returncode == 0, fixed.stderr
    assert {t: attempts(project, t) for t in ("ok", "flaky", "child", "grandchild", "other")} == {
        "ok": [1], "flaky": [1, 2], "child": [1], "grandchild": [1], "other": [1]}
    assert project.status("r1")["status"] == "complete"


def test_status_answers_while_a_run_holds_the_lock(project: Project) -> None:
    gate = project.root / "gate"
    project.behave("slow", gate=str(gate))
    project.pipeline({"slow": {"heartbeat": "1s", "effects": "read-only"},
                      "next": {"needs": "slow", "effects": "read-only"}})
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    wait_for(lambda: project.running("r1", "slow"), "'slow' to start")
    with pytest.raises(Timeout):  # the driver does hold the lock...
        FileLock(str(project.run_dir("r1").path / "lock")).acquire(timeout=0)

    data = project.status("r1")  # ...and status answers anyway (a 60 s timeout guards it)
    assert data["status"] == "running"
    assert data["driver"] == {**data["driver"], "pid": driver.pid, "alive": True}
    slow = data["tasks"][0]
    assert (slow["id"], slow["status"], slow["attempts"]) == ("slow", "running", 1)
    assert slow["heartbeat_age_s"] is not None
    assert [(r["run_id"], r["status"]) for r in project.status()["runs"]] == [("r1", "running")]
    text = project.cli("status", "r1")
    assert text.returncode == 0 and "slow" in text.stdout

    gate.touch()
    assert driver.wait() == 0, driver.describe()


def test_files_are_private(project: Project) -> None:
    skill = project.root / "skills" / "helper" / "SKILL.md"
    skill.parent.mkdir(parents=True)
    skill.write_text(SKILL.format(body="Body."))
    project.behave("bad", fail_unless=str(project.root / "never"))
    project.pipeline({"a": {"skill": "helper", "effects": "read-only"},
                      "bad": {"effects": "read-only"},
                      "c": {"needs": "a", "effects": "read-only"}})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stderr
    r = project.cli("resume", "r1", "--retry-failed")
    assert r.returncode == 1, r.stderr
    wrong = []
    for dirpath, _dirs, files in os.walk(project.state):
        if stat.S_IMODE(os.stat(dirpath).st_mode) != 0o700:
            wrong.append(f"{oct(stat.S_IMODE(os.stat(dirpath).st_mode))} {dirpath}")
        for name in files:
            path = Path(dirpath, name)
            if stat.S_IMODE(path.stat().st_mode) != 0o600:
                wrong.append(f"{oct(stat.S_IMODE(path.stat().st_mode))} {path}")
    assert not wrong, "\n".join(wrong)


def test_status_imports_no_litellm(project: Project) -> None:
    project.pipeline({"a": {"effects": "read-only"}})
    assert project.cli("run", "p.yaml", "--run-id", "r1").returncode == 0
    for args in (["status", "r1", "--json"], ["status"], ["status", "r1"]):
        r = subprocess.run([PY, "-X", "importtime", "-m", "agentctl", *args,
                            "--state-dir", str(project.state)], cwd=project.root,
                           env=project.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        imported = [line.split("|")[-1].strip() for line in r.stderr.splitlines()
                    if line.startswith("import time:")]
        assert "agentctl.views" in imported  # the check sees the imports...
        assert not [m for m in imported if m.split(".")[0] == "litellm"], args  # ...none is litellm


def test_resume_stops_an_orphan_of_a_run_started_through_a_symlink(project: Project) -> None:
    """The dead driver's agents are found by the run's directory in their environment, both
    sides resolved: a run started through a symlink and resumed through the real path (or
    the other way round, or after `..`) still has its orphan stopped before the retry."""
    gate = project.root / "gate"
    project.behave("slow", gate=str(gate))
    project.pipeline({"slow": {"effects": "read-only"}})
    real = project.state
    real.mkdir(parents=True, exist_ok=True)
    link = project.root / "state-link"
    link.symlink_to(real, target_is_directory=True)
    project.state = link
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    wait_for(lambda: project.running("r1", "slow"), "'slow' to start")
    (orphan,) = [e["pid"] for e in project.executions("slow")]
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    assert not gone(orphan)

    project.state = real
    resume = project.spawn("resume", "r1")
    wait_for(lambda: gone(orphan), "the orphan agent to be stopped")
    gate.touch()
    assert resume.wait() == 0, resume.describe()
    assert "stopped 1 agent process group(s)" in resume.stdout + resume.stderr
    assert [e["attempt"] for e in project.executions("slow")] == [1, 2]
