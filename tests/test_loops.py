"""Review loops (maker and checker), driving the real CLI (issue 6).

The maker and checker are tests/agents/wave_agent.py: the maker's draft is "v1", then what
the checker's feedback says comes next; the checker passes one given draft. Every execution
is logged, so the tests count iterations from what ran, as well as from the WAL.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from harness import PY, Project, check_run_files, wait_for

from agentctl.errors import RunNotFound

WAVE = Path(__file__).parent / "agents" / "wave_agent.py"


def wave(project: Project, *args: str) -> str:
    return json.dumps([PY, str(WAVE), str(project.config_path), *args])


def loop_pipeline(project: Project, *, maker: str = "build", pass_at: str = "v3",
                  max_iterations: int = 5, until: str | None = None) -> None:
    project.write_config()
    (project.root / "p.yaml").write_text(f"""\
name: loops
defaults: {{retries: 0}}
tasks:
  brief:
    command: {wave(project, "plan", "1")}
    effects: read-only
  review:
    needs: brief
    loop:
      maker:
        command: {wave(project, "maker", maker)}
        effects: read-only
      checker:
        command: {wave(project, "checker", pass_at)}
        effects: read-only
      max_iterations: {max_iterations}
""" + (f"      until: \"{until}\"\n" if until else "") + f"""\
  publish:
    needs: review
    with: {{draft: "${{{{ tasks.review.output.draft }}}}"}}
    command: {wave(project, "plan", "0")}
""")


def wal(project: Project, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in project.wal(run_id) if r["type"] == kind]


def rows(project: Project, run_id: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in project.status(run_id)["tasks"]}


def ran(project: Project, role: str) -> list[dict[str, Any]]:
    return [e for e in project.executions() if e["role"] == role and e["event"] == "start"]


def output_of(project: Project, run_id: str, task: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (project.run_dir(run_id).task_dir(task) / "output.json").read_text())
    return data


def test_a_loop_that_passes_on_iteration_3(project: Project) -> None:
    loop_pipeline(project, pass_at="v3")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stdout + r.stderr

    iterations = wal(project, "r1", "loop_iteration")
    assert [rec["iteration"] for rec in iterations] == [1, 2, 3]
    assert [rec["maker"]["id"] for rec in iterations] == [f"review.maker.{n}" for n in (1, 2, 3)]
    assert [rec["checker"]["id"] for rec in iterations] == [f"review.checker.{n}" for n in (1, 2, 3)]
    ended = wal(project, "r1", "group_ended")
    assert [(rec["task"], rec["status"], rec.get("exit_reason")) for rec in ended] == [
        ("review", "complete", "passed")]

    # The maker built on the checker's feedback; the checker saw this iteration's draft.
    makers = ran(project, "maker")
    assert [m["loop"]["iteration"] for m in makers] == [1, 2, 3]
    assert makers[0]["loop"]["feedback"] is None and makers[0]["loop"]["previous"] is None
    assert makers[1]["loop"]["feedback"]["output"] == {"verdict": "revise", "seen": "v1", "next": "v2"}
    assert makers[2]["loop"]["previous"]["output"] == {"draft": "v2"}
    checkers = ran(project, "checker")
    assert [c["loop"]["maker"]["output"]["draft"] for c in checkers] == ["v1", "v2", "v3"]
    # Both steps receive what the loop task needs (the checker checks against it too).
    for step in ("maker", "checker"):
        packet = json.loads((project.run_dir("r1").task_dir(f"review.{step}.2") / "input.json")
                            .read_text())
        assert list(packet["needs"]) == ["brief"], packet["needs"]
        assert packet["needs"]["brief"]["output"]["subtasks"][0]["name"] == "part-000"

    # Every iteration's reports are kept.
    for n in (1, 2, 3):
        assert output_of(project, "r1", f"review.maker.{n}")["output"] == {"draft": f"v{n}"}
        verdict = output_of(project, "r1", f"review.checker.{n}")["output"]["verdict"]
        assert verdict == ("pass" if n == 3 else "revise")
    # The loop's report is the passing maker's; its dependents get it.
    assert output_of(project, "r1", "review")["output"] == {"draft": "v3"}
    publish = [e for e in project.executions() if e["task"] == "publish"]
    assert len(publish) == 2  # start and done
    packet = json.loads((project.run_dir("r1").task_dir("publish") / "input.json").read_text())
    assert packet["with"] == {"draft": "v3"}
    assert packet["needs"]["review"]["output"] == {"draft": "v3"}

    st = rows(project, "r1")
    assert st["review"]["status"] == "complete"
    assert st["review"]["group"] == "loop" and st["review"]["children"] == 6
    assert st["review"]["exit_reason"] == "passed"
    assert st["review.checker.2"]["parent"] == "review" and st["review.checker.2"]["iteration"] == 2
    ids = list(st)
    assert ids[ids.index("review") + 1:ids.index("review") + 7] == [
        f"review.{role}.{n}" for n in (1, 2, 3) for role in ("maker", "checker")]
    check_run_files(project.run_dir("r1"))


def test_a_loop_that_hits_max_iterations(project: Project) -> None:
    loop_pipeline(project, pass_at="never", max_iterations=2)
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr

    assert [rec["iteration"] for rec in wal(project, "r1", "loop_iteration")] == [1, 2]
    [ended] = wal(project, "r1", "group_ended")
    assert ended["status"] == "failed" and ended["exit_reason"] == "max_iterations"
    assert len(ran(project, "maker")) == 2 and len(ran(project, "checker")) == 2

    st = rows(project, "r1")
    assert st["review"]["status"] == "failed"
    assert st["review"]["exit_reason"] == "max_iterations"
    assert st["review"]["error"]["category"] == "blocked"
    assert "after 2 iteration(s)" in st["review"]["error"]["message"]
    assert st["publish"]["status"] == "skipped"
    assert st["publish"]["error"]["category"] == "upstream_failed"
    for n in (1, 2):
        assert output_of(project, "r1", f"review.maker.{n}")["output"] == {"draft": f"v{n}"}
        assert output_of(project, "r1", f"review.checker.{n}")["output"]["verdict"] == "revise"
    assert project.status("r1")["status"] == "failed"


def test_retrying_a_loop_that_hit_max_iterations_runs_one_more_iteration(
        project: Project) -> None:
    loop_pipeline(project, pass_at="v3", max_iterations=2)
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert rows(project, "r1")["review"]["exit_reason"] == "max_iterations"
    r = project.cli("retry", "r1", "review")
    assert r.returncode == 0, r.stdout + r.stderr
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [rec["iteration"] for rec in wal(project, "r1", "loop_iteration")] == [1, 2, 3]
    st = rows(project, "r1")
    assert st["review"]["status"] == "complete" and st["review"]["exit_reason"] == "passed"
    assert st["publish"]["status"] == "complete"
    assert [m["loop"]["iteration"] for m in ran(project, "maker")] == [1, 2, 3]
    assert output_of(project, "r1", "review")["output"] == {"draft": "v3"}


def test_an_irreversible_maker_waits_for_approval_every_iteration(project: Project) -> None:
    loop_pipeline(project, pass_at="v2")
    text = (project.root / "p.yaml").read_text()
    maker = "        command: " + wave(project, "maker", "build") + "\n        effects: read-only"
    assert maker in text
    (project.root / "p.yaml").write_text(text.replace(maker, maker.replace("read-only", "irreversible")))
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "agentctl approve r1 review.maker.1" in r.stderr
    assert ran(project, "maker") == []
    for n in (1, 2):
        assert project.cli("approve", "r1", f"review.maker.{n}").returncode == 0
        r = project.cli("resume", "r1")
        assert r.returncode == (4 if n == 1 else 0), r.stdout + r.stderr
        assert len(ran(project, "maker")) == n
    assert rows(project, "r1")["review"]["exit_reason"] == "passed"


def test_a_maker_that_repeats_itself_stops_as_no_progress(project: Project) -> None:
    loop_pipeline(project, maker="same", pass_at="v3", max_iterations=10)
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr

    assert [rec["iteration"] for rec in wal(project, "r1", "loop_iteration")] == [1, 2]
    [ended] = wal(project, "r1", "group_ended")
    assert ended["exit_reason"] == "no_progress"
    st = rows(project, "r1")
    assert st["review"]["status"] == "failed"
    assert st["review"]["exit_reason"] == "no_progress"
    assert "same output in iterations 1 and 2" in st["review"]["error"]["message"]
    assert st["publish"]["status"] == "skipped"
    for n in (1, 2):
        assert output_of(project, "r1", f"review.maker.{n}")["output"] == {"draft": "the same draft"}


def test_until_can_name_the_iteration_and_needed_outputs(project: Project) -> None:
    # A custom `until` (written without ${{ }}): stop once the checker has seen v2. It may
    # name the loop task's needs, as `when` may.
    loop_pipeline(project, pass_at="never",
                  until="checker.output.seen == 'v2' && iteration >= 2 "
                        "&& tasks.brief.output.subtasks[0].name == 'part-000'")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [rec["iteration"] for rec in wal(project, "r1", "loop_iteration")] == [1, 2]
    assert rows(project, "r1")["review"]["exit_reason"] == "passed"


def test_sigkill_during_a_loop_then_resume_keeps_the_iterations(project: Project) -> None:
    """The driver dies while iteration 2's checker waits; resume re-runs only that checker
    and the loop still passes on iteration 3."""
    gate = project.root / "gate"
    loop_pipeline(project, pass_at="v3")
    # Iteration 2's checker waits for the gate (the harness's gating agent would not know
    # the loop protocol, so the checker is wrapped: wait, then check).
    text = (project.root / "p.yaml").read_text()
    waiter = (f"import os,sys,time,subprocess\n"
              f"p=os.environ['AGENTCTL_TASK_ID']\n"
              f"while p=='review.checker.2' and not os.path.exists({str(gate)!r}):\n"
              f"  time.sleep(0.02)\n"
              f"sys.exit(subprocess.call(sys.argv[1:]))\n")
    checker = wave(project, "checker", "v3")
    text = text.replace(checker, json.dumps([PY, "-c", waiter, *json.loads(checker)]))
    (project.root / "p.yaml").write_text(text)

    driver = project.spawn("run", "p.yaml", "--run-id", "r1")

    def checker_2_running() -> bool:
        try:
            t = project.replay("r1").tasks.get("review.checker.2")
        except RunNotFound:
            return False
        return t is not None and t.status == "running"
    wait_for(checker_2_running, "iteration 2's checker to be running")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    gate.touch()

    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [rec["iteration"] for rec in wal(project, "r1", "loop_iteration")] == [1, 2, 3]
    starts = [e["task"] for e in project.executions() if e["event"] == "start"]
    assert starts.count("review.maker.1") == 1 and starts.count("review.maker.2") == 1
    assert starts.count("review.checker.1") == 1
    assert starts.count("review.maker.3") == 1 and starts.count("review.checker.3") == 1
    assert rows(project, "r1")["review"]["exit_reason"] == "passed"
    assert output_of(project, "r1", "review")["output"] == {"draft": "v3"}
    check_run_files(project.run_dir("r1"))


def test_a_loop_over_its_budget_stops_as_budget(project: Project) -> None:
    """The maker is a model (the built-in offline provider, which reports tokens and cost):
    after one iteration the loop's token budget is spent, so no second iteration starts."""
    skill = project.root / "skills" / "drafter"
    (skill / "assets").mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        "---\nname: drafter\ndescription: Drafts a text. Use as a loop's maker.\n"
        "metadata:\n  agentctl.output: assets/output.schema.json\n---\nDraft the text.\n")
    (skill / "assets" / "output.schema.json").write_text(json.dumps({
        "type": "object", "required": ["draft"], "properties": {"draft": {"type": "string"}}}))
    project.write_config()
    (project.root / "p.yaml").write_text(f"""\
name: loops
defaults: {{retries: 0, model: offline/echo}}
tasks:
  review:
    loop:
      maker: {{skill: drafter}}
      checker:
        command: {wave(project, "checker", "never")}
        effects: read-only
      max_iterations: 5
      budget: {{tokens: 10}}
""")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert [rec["iteration"] for rec in wal(project, "r1", "loop_iteration")] == [1]
    [ended] = wal(project, "r1", "group_ended")
    assert ended["exit_reason"] == "budget" and ended["category"] == "budget"
    st = rows(project, "r1")
    assert st["review"]["exit_reason"] == "budget"
    assert st["review.maker.1"]["tokens"] > 10
    assert "budget is spent after 1 iteration(s)" in st["review"]["error"]["message"]
