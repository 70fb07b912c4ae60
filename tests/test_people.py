"""People in the loop (issue 5, items 1-3): approval gates, takeover, retry and cancel,
driving the real CLI as another terminal would.

Agents are tests/agents/people_agent.py; each execution is logged, so "never ran" and "ran
once" are counted. Nothing here asserts on time: every wait polls with a generous deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal

from harness import Project, check_run_files, gone, wait_for
from peoplekit import (
    add_counter_skill,
    agent,
    me,
    one_line_error,
    ran,
    records,
    tasks,
    view,
    wait_running,
    wait_status,
    write_report,
)

GOOD = {"status": "COMPLETE", "summary": "done by hand", "output": {"n": 7}}


def _iso(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------- approvals


def test_approval_pauses_the_run_while_another_branch_completes(project: Project) -> None:
    project.pipeline({
        "side": {"command": agent(project, "ok")},
        "deploy": {"command": agent(project, "ok"), "approval": "required"},
        "after": {"command": agent(project, "ok"), "needs": "deploy"},
    })
    r = project.cli("run", "p.yaml", "--run-id", "r")
    assert r.returncode == 4, r.stderr
    assert "agentctl approve r deploy" in r.stderr
    assert "agentctl reject r deploy --reason" in r.stderr
    st = project.status("r")
    assert st["status"] == "paused"
    rows = {t["id"]: t for t in st["tasks"]}
    assert rows["side"]["status"] == "complete"  # the other branch went on
    assert rows["deploy"]["status"] == "waiting_approval"
    assert rows["after"]["status"] == "pending"
    assert ran(project, "deploy") == []

    # Only a task that waits (or will wait) for a person can be approved.
    for tid in ("side", "after"):  # complete, and pending: neither has a gate
        bad = project.cli("approve", "r", tid)
        assert bad.returncode == 2
        assert f"task '{tid}' needs no approval" in one_line_error(bad.stderr)

    ok = project.cli("approve", "r", "deploy", "--note", "checked the diff")
    assert ok.returncode == 0, ok.stderr
    assert "approved 'deploy'" in ok.stderr and "agentctl resume r" in ok.stderr
    (rec,) = records(project, "r", "approval")
    assert rec["task"] == "deploy" and rec["decision"] == "approved"
    assert rec["by"] == me() and rec["note"] == "checked the diff"
    assert abs((dt.datetime.now(dt.UTC) - _iso(rec["at"])).total_seconds()) < 3600
    assert tasks(project, "r")["deploy"]["status"] == "pending"

    again = project.cli("approve", "r", "deploy")
    assert again.returncode == 2  # approved already: not waiting any more
    one_line_error(again.stderr)
    assert len(records(project, "r", "approval")) == 1

    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    assert view(project, "r")["status"] == "complete"
    assert [e["task"] for e in ran(project)].count("deploy") == 1
    assert len(ran(project, "side")) == 1
    late = project.cli("approve", "r", "deploy")
    assert late.returncode == 2
    assert "task 'deploy' is complete" in one_line_error(late.stderr)
    check_run_files(project.run_dir("r"))


def test_an_irreversible_task_needs_approval_too(project: Project) -> None:
    project.pipeline({"push": {"command": agent(project, "ok"), "effects": "irreversible"}})
    r = project.cli("run", "p.yaml", "--run-id", "r")
    assert r.returncode == 4, r.stderr
    assert tasks(project, "r")["push"]["status"] == "waiting_approval"
    assert ran(project) == []
    assert project.cli("approve", "r", "push").returncode == 0
    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    assert len(ran(project, "push")) == 1


def test_reject_fails_the_task_and_skips_its_dependents_with_the_reason(project: Project) -> None:
    project.pipeline({
        "side": {"command": agent(project, "ok")},
        "deploy": {"command": agent(project, "ok"), "approval": "required"},
        "after": {"command": agent(project, "ok"), "needs": "deploy"},
        "last": {"command": agent(project, "ok"), "needs": "after"},
    })
    assert project.cli("run", "p.yaml", "--run-id", "r").returncode == 4

    no_reason = project.cli("reject", "r", "deploy")
    assert no_reason.returncode == 2
    assert records(project, "r", "approval") == []

    rej = project.cli("reject", "r", "deploy", "--reason", "not on a Friday")
    assert rej.returncode == 0, rej.stderr
    assert "rejected 'deploy': not on a Friday" in rej.stderr
    (rec,) = records(project, "r", "approval")
    assert rec["decision"] == "rejected" and rec["by"] == me() and rec["note"] == "not on a Friday"

    # The dependents are skipped at once, with the person's reason.
    rows = tasks(project, "r")
    assert rows["deploy"]["status"] == "failed"
    assert rows["deploy"]["error"]["category"] == "rejected"
    assert "not on a Friday" in rows["deploy"]["error"]["message"]
    for tid in ("after", "last"):
        assert rows[tid]["status"] == "skipped", rows[tid]
        assert rows[tid]["error"]["category"] == "upstream_failed"
        assert "not on a Friday" in rows[tid]["error"]["message"], rows[tid]

    res = project.cli("resume", "r")
    assert res.returncode == 1, res.stderr
    st = project.status("r")
    assert st["status"] == "failed"
    rows = {t["id"]: t for t in st["tasks"]}
    assert rows["deploy"]["error"]["category"] == "rejected"
    assert rows["side"]["status"] == "complete"
    assert ran(project, "deploy") == [] and ran(project, "after") == []


def test_decisions_taken_while_the_run_goes_are_picked_up_by_the_live_driver(
        project: Project) -> None:
    gate = project.root / "gate"
    project.pipeline({
        "long": {"command": agent(project, "wait", str(gate))},
        "deploy": {"command": agent(project, "ok"), "approval": "required"},
        "after": {"command": agent(project, "ok"), "needs": "deploy"},
        "risky": {"command": agent(project, "ok"), "approval": "required"},
        "risky-after": {"command": agent(project, "ok"), "needs": "risky"},
        "broken": {"command": agent(project, "exit", "3")},
        "mended": {"command": agent(project, "ok"), "needs": "broken"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_status(project, "r", "deploy", "waiting_approval")
    wait_status(project, "r", "risky", "waiting_approval")
    wait_running(project, "r", "long")

    # Someone other than the driver's user decides: the log names them, not the driver's.
    ok = project.cli("approve", "r", "deploy", "--note", "go",
                     extra_env={"LOGNAME": "alice", "USER": "alice"})
    assert ok.returncode == 0, ok.stderr
    assert "approved 'deploy'" in ok.stderr
    assert "resume" not in ok.stderr  # the live driver carries it out
    # The waiting task runs without any resume (its dependent, in the next wave, waits
    # for 'long' to settle).
    wait_status(project, "r", "deploy", "complete")
    assert driver.poll() is None, driver.describe()
    assert len(ran(project, "deploy")) == 1
    (rec,) = records(project, "r", "approval")
    assert me() != "alice"
    assert rec["by"] == "alice" and rec["note"] == "go" and rec["at"]

    rej = project.cli("reject", "r", "risky", "--reason", "too risky today")
    assert rej.returncode == 0, rej.stderr
    rows = wait_status(project, "r", "risky-after", "skipped")
    assert "too risky today" in rows["error"]["message"]
    assert tasks(project, "r")["risky"]["error"]["category"] == "rejected"

    # A takeover while the run goes: the skipped dependent is queued again by the driver.
    wait_status(project, "r", "mended", "skipped")
    took = project.cli("complete", "r", "broken", "--output",
                       str(write_report(project, "g.json", GOOD)))
    assert took.returncode == 0, took.stderr
    assert "resume" not in took.stderr
    assert tasks(project, "r")["mended"]["status"] == "pending"

    gate.touch()
    assert driver.wait() == 1, driver.describe()
    st = view(project, "r")
    assert st["status"] == "failed"
    assert {t["id"]: t["status"] for t in st["tasks"]} == {
        "long": "complete", "deploy": "complete", "after": "complete", "risky": "failed",
        "risky-after": "skipped", "broken": "complete", "mended": "complete"}
    assert len(records(project, "r", "driver_started")) == 1  # no resume was needed
    assert [e["task"] for e in ran(project)].count("deploy") == 1
    assert ran(project, "risky") == [] and ran(project, "risky-after") == []
    check_run_files(project.run_dir("r"))


def test_a_decision_sent_to_a_driver_that_ends_without_reading_it_is_carried_out(
        project: Project) -> None:
    """The driver holds the lock when the command looks, then ends (here: it is frozen, then
    killed) before it reads control/. The command must not wait in vain and fail: it takes
    the lock, withdraws its request and logs the decision itself."""
    gate = project.root / "gate"
    project.pipeline({
        "long": {"command": agent(project, "wait", str(gate))},
        "deploy": {"command": agent(project, "ok"), "approval": "required"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_status(project, "r", "deploy", "waiting_approval")
    wait_running(project, "r", "long")
    os.kill(driver.pid, signal.SIGSTOP)
    control = project.run_dir("r").control
    approve = project.spawn("approve", "r", "deploy", "--note", "late")
    wait_for(lambda: control.is_dir() and any(p.suffix == ".json" for p in control.iterdir()),
             "the request in control/")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL

    assert approve.wait() == 0, approve.describe()
    assert "approved 'deploy'" in approve.stderr and "agentctl resume r" in approve.stderr
    (rec,) = records(project, "r", "approval")
    assert rec["note"] == "late" and rec["by"] == me()
    assert [p.name for p in control.iterdir()] == []  # nothing left for a later driver

    gate.touch()
    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    assert len(records(project, "r", "approval")) == 1
    assert len(ran(project, "deploy")) == 1


# ---------------------------------------------------------------------------- takeover


def test_complete_a_failed_task_then_resume_runs_its_dependents(project: Project) -> None:
    add_counter_skill(project)
    project.pipeline({
        "count": {"skill": "counter", "command": agent(project, "exit", "3")},
        "use": {"command": agent(project, "ok"), "needs": "count"},
        "use2": {"command": agent(project, "ok"), "needs": "use"},
    })
    assert project.cli("run", "p.yaml", "--run-id", "r").returncode == 1
    rows = tasks(project, "r")
    assert rows["count"]["error"]["category"] == "command_failed"
    assert rows["use"]["status"] == rows["use2"]["status"] == "skipped"

    # Reports a person supplies are validated like an agent's: the skill's schema too.
    bad = project.cli("complete", "r", "count", "--output",
                      str(write_report(project, "bad.json", {**GOOD, "output": {"n": "seven"}})))
    assert bad.returncode == 2
    assert "output.n" in one_line_error(bad.stderr)
    blocked = project.cli("complete", "r", "count", "--output", str(write_report(
        project, "blocked.json", {"status": "BLOCKED", "summary": "x", "blockers": ["y"]})))
    assert blocked.returncode == 2
    assert "COMPLETE" in one_line_error(blocked.stderr)
    garbage = project.cli("complete", "r", "count", "--output",
                          str(write_report(project, "garbage.json", "not json {")))
    assert garbage.returncode == 2
    one_line_error(garbage.stderr)
    assert records(project, "r", "task_taken_over") == []
    assert tasks(project, "r")["count"]["status"] == "failed"

    good = project.cli("complete", "r", "count", "--output",
                       str(write_report(project, "good.json", GOOD)), "--note", "counted by hand")
    assert good.returncode == 0, good.stderr
    assert "agentctl resume r" in good.stderr
    (rec,) = records(project, "r", "task_taken_over")
    assert rec["task"] == "count" and rec["by"] == me() and rec["note"] == "counted by hand"
    assert rec["report"]["output"] == {"n": 7}
    output = json.loads((project.run_dir("r").task_dir("count") / "output.json").read_text())
    assert output["status"] == "COMPLETE" and output["output"] == {"n": 7}
    resets = {x["task"]: x for x in records(project, "r", "task_reset")}
    assert set(resets) == {"use", "use2"} and resets["use"]["by"] == me()
    rows = tasks(project, "r")
    assert rows["count"]["status"] == "complete"
    assert rows["use"]["status"] == rows["use2"]["status"] == "pending"

    done = project.cli("complete", "r", "count", "--output", str(project.root / "good.json"))
    assert done.returncode == 2  # complete already
    one_line_error(done.stderr)

    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    assert view(project, "r")["status"] == "complete"
    assert len(ran(project, "count")) == 1  # the person's report stands
    assert len(ran(project, "use")) == 1 and len(ran(project, "use2")) == 1
    # Downstream received the person's report.
    packet = json.loads((project.run_dir("r").task_dir("use") / "input.json").read_text())
    assert packet["needs"]["count"]["output"] == {"n": 7}
    assert packet["needs"]["count"]["summary"] == "done by hand"
    check_run_files(project.run_dir("r"))


def test_retry_a_failed_task(project: Project) -> None:
    flag = project.root / "fixed"
    project.pipeline({
        "flaky": {"command": agent(project, "fail-unless", str(flag))},
        "after": {"command": agent(project, "ok"), "needs": "flaky"},
    })
    assert project.cli("run", "p.yaml", "--run-id", "r").returncode == 1
    assert tasks(project, "r")["after"]["status"] == "skipped"

    flag.touch()
    ok = project.cli("retry", "r", "flaky")
    assert ok.returncode == 0, ok.stderr
    assert "agentctl resume r" in ok.stderr
    resets = records(project, "r", "task_reset")
    assert [x["task"] for x in resets] == ["flaky", "after"]
    assert all(x["by"] == me() for x in resets)
    rows = tasks(project, "r")
    assert rows["flaky"]["status"] == "pending" and rows["flaky"]["error"] is None
    assert rows["after"]["status"] == "pending"

    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    rows = tasks(project, "r")
    assert rows["flaky"]["status"] == "complete" and rows["flaky"]["attempts"] == 2
    assert [e["attempt"] for e in ran(project, "flaky")] == [1, 2]
    again = project.cli("retry", "r", "flaky")
    assert again.returncode == 2  # a complete task is not retried
    assert "complete" in one_line_error(again.stderr)


def test_complete_a_task_of_a_crashed_run_stops_its_orphan(project: Project) -> None:
    add_counter_skill(project)
    project.pipeline({
        "work": {"skill": "counter", "command": agent(project, "wait", str(project.root / "never"))},
        "after": {"command": agent(project, "ok"), "needs": "work"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_running(project, "r", "work")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    (orphan,) = ran(project, "work")
    assert not gone(orphan["pid"])  # the agent outlives its driver
    st = project.status("r")
    assert st["status"] == "crashed"

    ok = project.cli("complete", "r", "work", "--output", str(write_report(project, "g.json", GOOD)))
    assert ok.returncode == 0, ok.stderr
    # The person's report stands: the agent still working on the task is stopped, and its
    # attempt is closed in the log.
    wait_for(lambda: gone(orphan["pid"]), "the orphan agent to be stopped")
    ended = [x for x in records(project, "r", "attempt_ended") if x["task"] == "work"]
    assert len(ended) == 1 and ended[0]["outcome"] == "abandoned"
    assert tasks(project, "r")["work"]["status"] == "complete"
    assert json.loads((project.run_dir("r").task_dir("work") / "output.json").read_text())[
        "output"] == {"n": 7}

    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    assert len(ran(project, "work")) == 1 and len(ran(project, "after")) == 1
    check_run_files(project.run_dir("r"))


def test_retry_a_task_of_a_crashed_run_never_runs_two_copies(project: Project) -> None:
    gate = project.root / "gate"
    project.pipeline({"work": {"command": agent(project, "wait", str(gate))}})
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_running(project, "r", "work")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    (orphan,) = ran(project, "work")

    ok = project.cli("retry", "r", "work")
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: gone(orphan["pid"]), "the orphan agent to be stopped")
    gate.touch()
    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    assert [e["attempt"] for e in ran(project, "work")] == [1, 2]
    check_run_files(project.run_dir("r"))


def test_complete_a_needs_review_task(project: Project) -> None:
    project.pipeline({
        "charge": {"command": agent(project, "wait", str(project.root / "never")),
                   "effects": "irreversible"},
        "receipt": {"command": agent(project, "ok"), "needs": "charge"},
    })
    assert project.cli("run", "p.yaml", "--run-id", "r").returncode == 4
    assert project.cli("approve", "r", "charge").returncode == 0
    driver = project.spawn("resume", "r")
    wait_running(project, "r", "charge")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL

    # An irreversible task in flight at a crash is not run again: a person decides.
    res = project.cli("resume", "r")
    assert res.returncode == 4, res.stderr
    assert "agentctl complete r charge" in res.stderr
    row = tasks(project, "r")["charge"]
    assert row["status"] == "needs_review"
    assert row["error"]["category"] == "crashed"
    assert len(ran(project, "charge")) == 1

    ok = project.cli("complete", "r", "charge", "--output",
                     str(write_report(project, "g.json", {"status": "COMPLETE",
                                                          "summary": "the charge went through"})),
                     "--note", "checked the bank")
    assert ok.returncode == 0, ok.stderr
    (rec,) = records(project, "r", "task_taken_over")
    assert rec["note"] == "checked the bank" and rec["by"] == me()
    res = project.cli("resume", "r")
    assert res.returncode == 0, res.stderr
    assert len(ran(project, "charge")) == 1 and len(ran(project, "receipt")) == 1


# ---------------------------------------------------------------------------- cancel


def test_cancel_from_another_terminal_stops_the_run_and_its_agents(project: Project) -> None:
    pids_file = project.root / "pids"
    project.pipeline({
        "spin": {"command": agent(project, "spawn", str(pids_file))},
        "slow": {"command": agent(project, "wait", str(project.root / "never"))},
        "after": {"command": agent(project, "ok"), "needs": "spin"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_for(lambda: pids_file.exists() and pids_file.read_text().endswith("\n"),
             "the agent to spawn its child")
    wait_running(project, "r", "slow")
    pids = json.loads(pids_file.read_text().splitlines()[0])

    c = project.cli("cancel", "r", "--reason", "wrong branch")
    assert c.returncode == 0, c.stderr
    assert "cancel requested" in c.stderr
    assert driver.wait(timeout=60) == 1, driver.describe()
    for pid in (pids["agent"], pids["child"]):
        wait_for(lambda pid=pid: gone(pid), f"pid {pid} to be gone")

    st = project.status("r")
    assert st["status"] == "cancelled"
    rows = {t["id"]: t for t in st["tasks"]}
    for tid in ("spin", "slow", "after"):
        assert rows[tid]["status"] == "cancelled", rows[tid]
        assert rows[tid]["error"]["category"] == "cancelled"
    (rec,) = records(project, "r", "cancel_requested")
    assert rec["by"] == me() and rec["reason"] == "wrong branch" and rec["at"]
    assert ran(project, "after") == []

    again = project.cli("cancel", "r")
    assert again.returncode == 2  # nothing left to cancel
    one_line_error(again.stderr)
    assert len(records(project, "r", "cancel_requested")) == 1
    # A plain resume keeps a person's cancel; --retry-failed runs the cancelled tasks again.
    res = project.cli("resume", "r")
    assert res.returncode == 1, res.stderr
    assert "--retry-failed" in res.stderr
    assert view(project, "r")["status"] == "cancelled"
    assert len(records(project, "r", "driver_started")) == 1
    check_run_files(project.run_dir("r"))


def test_cancel_a_paused_run_and_refuse_to_cancel_a_complete_one(project: Project) -> None:
    project.pipeline({
        "side": {"command": agent(project, "ok")},
        "deploy": {"command": agent(project, "ok"), "approval": "required"},
    })
    assert project.cli("run", "p.yaml", "--run-id", "r").returncode == 4
    c = project.cli("cancel", "r")
    assert c.returncode == 0, c.stderr
    st = project.status("r")
    assert st["status"] == "cancelled"
    assert {t["id"]: t["status"] for t in st["tasks"]} == {"side": "complete",
                                                           "deploy": "cancelled"}
    # A cancelled run is finished, and a person may still take it up again.
    assert project.cli("retry", "r", "deploy").returncode == 0
    res = project.cli("resume", "r")
    assert res.returncode == 4, res.stderr  # deploy waits for its approval again
    assert tasks(project, "r")["deploy"]["status"] == "waiting_approval"

    project.pipeline({"one": {"command": agent(project, "ok")}}, path="q.yaml")
    assert project.cli("run", "q.yaml", "--run-id", "q").returncode == 0
    refused = project.cli("cancel", "q")
    assert refused.returncode == 2
    assert "complete" in one_line_error(refused.stderr)
    assert view(project, "q")["status"] == "complete"
    assert records(project, "q", "cancel_requested") == []


def test_cancel_a_crashed_run_with_a_fan_out_in_flight(project: Project) -> None:
    project.pipeline({
        "plan": {"command": agent(project, "plan", "2")},
        "work": {"needs": "plan", "foreach": "${{ tasks.plan.output.items }}",
                 "command": agent(project, "wait", str(project.root / "never"))},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_running(project, "r", "work.0")
    wait_running(project, "r", "work.1")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL

    c = project.cli("cancel", "r", "--reason", "enough")
    assert c.returncode == 0, c.stderr
    st = project.status("r")  # the log still replays
    assert st["status"] == "cancelled"
    assert {t["id"]: t["status"] for t in st["tasks"]} == {
        "plan": "complete", "work": "cancelled", "work.0": "cancelled", "work.1": "cancelled"}
    for e in ran(project, "work.0") + ran(project, "work.1"):
        wait_for(lambda e=e: gone(e["pid"]), "the orphaned instances to be stopped")
    check_run_files(project.run_dir("r"))
