"""Failure categories (issue 5, item 5): each one produced by a real run of the CLI and read
back from `agentctl status RUN --json` as `error: {category, message}`.

Agents are tests/agents/people_agent.py; llm tasks run on the built-in offline provider with
scripted failures (agentctl/offline.py). No timed asserts: waits poll with generous deadlines.
"""

from __future__ import annotations

import os
import signal

import yaml
from harness import Project, gone, wait_for
from peoplekit import add_counter_skill, agent, me, ran, records, wait_running, wait_status


def errors(project: Project, run_id: str) -> dict[str, tuple[str, dict[str, str] | None]]:
    """task -> (status, error) as `agentctl status RUN --json` prints them."""
    return {t["id"]: (t["status"], t["error"]) for t in project.status(run_id)["tasks"]}


def test_each_failure_category_of_a_finished_run(project: Project) -> None:
    add_counter_skill(project)
    project.pipeline({
        "slow": {"command": agent(project, "sleep", "60"), "timeout": "300ms"},
        "silent": {"command": agent(project, "silent"), "heartbeat": "200ms"},
        "stuck": {"command": agent(project, "blocked", "no credentials for the registry")},
        "misshapen": {"skill": "counter", "command": agent(project, "bad-schema")},
        "garbled": {"command": agent(project, "not-json")},
        "crashes": {"command": agent(project, "exit", "3")},
        "gives-up": {"command": agent(project, "failed")},
        "downstream": {"command": agent(project, "ok"), "needs": "crashes"},
        # llm tasks on the offline provider: a 500 on every try (and no retries of it), and
        # replies that never validate from a task whose budget the first reply spends.
        "provider": {"skill": "counter", "model": "offline/down?fail=500x*&retries=0"},
        "spender": {"skill": "counter", "model": "offline/verbose?fail=schemax*",
                    "budget": {"tokens": 10}},
    }, limits={"concurrency": 10})
    # project.pipeline gives every task a command; these two must stay llm tasks.
    body = yaml.safe_load((project.root / "p.yaml").read_text())
    for tid in ("provider", "spender"):
        del body["tasks"][tid]["command"]
    (project.root / "p.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    r = project.cli("run", "p.yaml", "--run-id", "r")
    assert r.returncode == 1, r.stderr
    st = project.status("r")
    assert st["status"] == "failed"
    got = {t["id"]: (t["status"], t["error"]) for t in st["tasks"]}

    def check(tid: str, status: str, category: str, *words: str) -> None:
        s, err = got[tid]
        assert (s, err and err["category"]) == (status, category), (tid, got[tid])
        assert err is not None
        for w in words:
            assert w in err["message"], (tid, err)

    check("slow", "failed", "timeout", "timed out after 0.3s")
    check("silent", "failed", "stale", "no heartbeat", "0.2s")
    check("stuck", "blocked", "blocked", "no credentials for the registry")
    check("misshapen", "failed", "invalid_output", "output.n", "integer")
    check("garbled", "failed", "invalid_output", "not valid JSON")
    check("crashes", "failed", "command_failed", "exit code 3", "giving up with exit 3")
    check("gives-up", "failed", "command_failed", "FAILED", "gives-up gave up")
    check("downstream", "skipped", "upstream_failed", "needs 'crashes', which failed")
    check("provider", "failed", "provider_error", "500")
    check("spender", "failed", "budget", "budget", "10 tokens")
    assert ran(project, "downstream") == []
    table = project.cli("status", "r")  # the table shows them too
    assert table.returncode == 0, table.stderr
    for category in ("timeout", "stale", "blocked", "invalid_output", "command_failed",
                     "upstream_failed", "provider_error", "budget"):
        assert f"{category}: " in table.stdout, (category, table.stdout)
    # The agents of the timed-out and the stale task were stopped, not left behind.
    for tid in ("slow", "silent"):
        (e,) = ran(project, tid)
        wait_for(lambda e=e: gone(e["pid"]), f"{tid}'s agent to be gone")


def test_crashed_an_attempt_abandoned_by_a_killed_driver(project: Project) -> None:
    gate = project.root / "gate"
    project.pipeline({
        "work": {"command": agent(project, "wait", str(gate)), "effects": "mutating"},
        "charge": {"command": agent(project, "wait", str(gate)), "effects": "irreversible"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_status(project, "r", "charge", "waiting_approval")
    assert project.cli("approve", "r", "charge").returncode == 0
    wait_running(project, "r", "work")
    wait_running(project, "r", "charge")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    gate.touch()

    res = project.cli("resume", "r")
    assert res.returncode == 4, res.stderr  # the irreversible task waits for a person
    got = errors(project, "r")
    # A mutating task runs again; its abandoned attempt keeps the category in the log.
    assert got["work"] == ("complete", None)
    (first,) = [x for x in records(project, "r", "attempt_ended")
                if x["task"] == "work" and x["attempt"] == 1]
    assert first["outcome"] == "abandoned" and first["category"] == "crashed"
    assert [e["attempt"] for e in ran(project, "work")] == [1, 2]
    # An irreversible one is not run again: it needs review, as crashed.
    status, err = got["charge"]
    assert status == "needs_review" and err is not None
    assert err["category"] == "crashed" and "irreversible" in err["message"]
    assert len(ran(project, "charge")) == 1


def test_rejected_and_cancelled_while_the_run_goes(project: Project) -> None:
    project.pipeline({
        "spin": {"command": agent(project, "wait", str(project.root / "never"))},
        "deploy": {"command": agent(project, "ok"), "approval": "required"},
        "announce": {"command": agent(project, "ok"), "needs": "deploy"},
    })
    driver = project.spawn("run", "p.yaml", "--run-id", "r")
    wait_status(project, "r", "deploy", "waiting_approval")
    wait_running(project, "r", "spin")
    rej = project.cli("reject", "r", "deploy", "--reason", "change freeze")
    assert rej.returncode == 0, rej.stderr
    wait_status(project, "r", "announce", "skipped")
    assert project.cli("cancel", "r").returncode == 0
    assert driver.wait(timeout=60) == 1, driver.describe()

    st = project.status("r")
    assert st["status"] == "cancelled"
    got = {t["id"]: (t["status"], t["error"]) for t in st["tasks"]}
    assert got["deploy"] == ("failed", {"category": "rejected",
                                        "message": f"rejected by {me()}: change freeze"})
    assert got["announce"][0] == "skipped"
    assert got["announce"][1] == {"category": "upstream_failed",
                                  "message": f"needs 'deploy', which was rejected by {me()}: "
                                             "change freeze"}
    assert got["spin"] == ("cancelled", {"category": "cancelled",
                                         "message": "the run was cancelled"})
    (end,) = [x for x in records(project, "r", "attempt_ended") if x["task"] == "spin"]
    assert end["category"] == "cancelled"
    assert ran(project, "deploy") == [] and ran(project, "announce") == []
