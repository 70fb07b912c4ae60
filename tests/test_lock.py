"""One driver per run (DESIGN.md section 6, promise 4), with real processes."""

from __future__ import annotations

import os
import signal

from harness import Project, check_run_files, wait_for


def crashed_run(project: Project, run_id: str) -> None:
    """A run whose driver was SIGKILLed while task 'slow' was in flight (gated)."""
    gate = project.root / "gate"
    project.behave("slow", gate=str(gate), effect=True)
    project.pipeline({"first": {"effects": "read-only"},
                      "slow": {"needs": "first", "effects": "mutating"},
                      "last": {"needs": "slow", "effects": "read-only"}})
    driver = project.spawn("run", "p.yaml", "--run-id", run_id)
    wait_for(lambda: project.running(run_id, "slow"), "'slow' to be running")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL


def test_two_resumes_racing_exactly_one_wins(project: Project) -> None:
    gate = project.root / "gate"
    crashed_run(project, "r1")

    # Two drivers started at the same moment. Agents stay gated, so the winner holds the lock
    # until the loser has answered: the race is decided by the lock, not by timing.
    a = project.spawn("resume", "r1")
    b = project.spawn("resume", "r1")
    first = wait_for(lambda: next((d for d in (a, b) if d.poll() is not None), None),
                     "one of the two resumes to exit")
    winner = b if first is a else a
    assert first.poll() == 3, first.describe()
    assert winner.poll() is None, winner.describe()
    # The loser names the live holder: the winner's pid, not the dead driver's.
    assert f"pid {winner.pid}" in first.stderr, first.describe()
    assert "held by" in first.stderr
    assert "Traceback" not in first.stderr

    gate.touch()
    assert winner.wait() == 0, winner.describe()
    state = project.replay("r1")
    assert {t.status for t in state.tasks.values()} == {"complete"}
    # Only one driver ever drove the run after the crash: one driver_started from a resume.
    resumes = [r for r in project.wal("r1") if r["type"] == "driver_started" and r["mode"] == "resume"]
    assert [r["pid"] for r in resumes] == [winner.pid]
    assert len(project.effects_of("slow")) == 1
    check_run_files(project.run_dir("r1"))


def test_a_dead_holders_lock_is_taken_over(project: Project) -> None:
    gate = project.root / "gate"
    crashed_run(project, "r1")

    # A resume that dies holding the lock (SIGKILL: no cleanup, no release of its own).
    second = project.spawn("resume", "r1")
    wait_for(lambda: sum(1 for r in project.wal("r1") if r["type"] == "driver_started") == 2
             and project.running("r1", "slow"), "the second driver to start 'slow' again")
    os.killpg(second.pid, signal.SIGKILL)
    assert second.wait() == -signal.SIGKILL

    gate.touch()
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stderr
    state = project.replay("r1")
    assert state.status == "complete"
    assert all(t.status == "complete" for t in state.tasks.values())
    # The orphans of the two dead drivers were stopped or finished; the effect happened once.
    assert len(project.effects_of("slow")) == 1
    assert len({e["key"] for e in project.executions("slow")}) == 1


def test_run_while_a_live_driver_holds_the_lock_exits_3(project: Project) -> None:
    gate = project.root / "gate"
    project.behave("slow", gate=str(gate))
    project.pipeline({"slow": {"effects": "read-only"}})
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")
    wait_for(lambda: project.running("r1", "slow"), "'slow' to be running")

    r = project.cli("resume", "r1")
    assert r.returncode == 3
    assert f"pid {driver.pid}" in r.stderr
    assert r.stdout == ""
    # The live driver was not disturbed.
    assert driver.poll() is None
    gate.touch()
    assert driver.wait() == 0, driver.describe()
