"""Fan-out (`foreach`) and conditions (`when`), driving the real CLI (issue 6).

Agents are tests/agents/wave_agent.py; every execution is logged to the project's exec log,
so "ran exactly once" is counted, not assumed. Nothing here asserts on time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from harness import PY, REPO, Project, check_run_files, gone, wait_for

from agentctl.errors import RunNotFound

WAVE = Path(__file__).parent / "agents" / "wave_agent.py"


def wave(project: Project, *args: str) -> list[str]:
    return [PY, str(WAVE), str(project.config_path), *args]


def write(project: Project, text: str, name: str = "p.yaml") -> Path:
    project.write_config()
    path = project.root / name
    path.write_text(text)
    return path


def records(project: Project, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in project.wal(run_id) if r["type"] == kind]


def rows(project: Project, run_id: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in project.status(run_id)["tasks"]}


def events(project: Project, event: str) -> Counter[str]:
    return Counter(e["task"] for e in project.executions() if e.get("event") == event)


def fanout_pipeline(project: Project, n: int, *, hang_from: int, concurrency: int = 8) -> Path:
    flag = project.root / "hang.flag"
    flag.touch()
    def argv(*a: str) -> str:
        return json.dumps(wave(project, *a))

    write(project, f"""\
name: fan
defaults: {{timeout: 120s, retries: 0, backoff: 0.05s}}
limits: {{concurrency: {concurrency}}}
tasks:
  plan:
    command: {argv("plan", str(n))}
    effects: read-only
  work:
    needs: plan
    foreach: ${{{{ tasks.plan.output.subtasks }}}}
    key: ${{{{ item.name }}}}
    command: {argv("work", f"hang={hang_from}", f"flag={flag}")}
    effects: mutating
  collect:
    needs: work
    with:
      first: ${{{{ tasks.work.output[0].output.name }}}}
      last_square: ${{{{ tasks.work.output[{n - 1}].output.square }}}}
    command: {argv("collect")}
    effects: read-only
""")
    return flag


# --------------------------------------------------------------------------- the crash test


def test_sigkill_in_the_middle_of_a_fanout_of_100_then_resume(project: Project) -> None:
    """Kill the driver while 60 instances are complete and 8 are in flight; resume runs the
    other 40 once, never the 60 again, with the same instance ids, and the downstream task
    gets all 100 reports in order."""
    n, hang_from, conc = 100, 60, 8
    flag = fanout_pipeline(project, n, hang_from=hang_from, concurrency=conc)
    driver = project.spawn("run", "p.yaml", "--run-id", "r1")

    def mid_wave() -> bool:
        try:
            st = project.replay("r1")
        except RunNotFound:
            return False
        kids = [t for t in st.tasks.values() if t.parent == "work"]
        done = sum(t.status == "complete" for t in kids)
        # The instances from `hang_from` on hang while the flag exists: once the first 60 are
        # committed and the next `conc` are executing, the wave is exactly half done.
        return done == hang_from and len(events(project, "start")) >= 1 + hang_from + conc
    wait_for(mid_wave, "60 instances complete and 8 in flight", timeout=90)
    before = project.status("r1")
    os.kill(driver.pid, signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL

    expanded_before = records(project, "r1", "tasks_expanded")
    assert len(expanded_before) == 1
    ids = [i["id"] for i in expanded_before[0]["instances"]]
    assert ids == [f"work.part-{i:03d}" for i in range(n)]
    by_id = {t["id"]: t for t in before["tasks"]}
    complete_at_kill = {i for i in ids if by_id[i]["status"] == "complete"}
    running_at_kill = {i for i in ids if by_id[i]["status"] == "running"}
    assert len(complete_at_kill) == hang_from and len(running_at_kill) == conc
    assert by_id["work"]["group"] == "foreach" and by_id["work"]["children"] == n
    assert by_id["work.part-000"]["parent"] == "work"
    assert by_id["collect"]["status"] == "pending"
    assert project.status()["runs"][0]["status"] == "crashed"
    orphans = [e["pid"] for e in project.executions() if e["task"] in running_at_kill]
    flag.unlink()  # from now on no instance hangs; the 8 orphans hang on until resume kills them

    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert all(gone(pid) for pid in orphans), "resume left the cut-off agents running"

    # The expansion was not redone: one record, the same instances, in the same order.
    assert records(project, "r1", "tasks_expanded") == expanded_before
    starts, dones = events(project, "start"), events(project, "done")
    for i in ids:
        assert dones[i] == 1, f"{i} finished {dones[i]} times"
        if i in complete_at_kill:
            assert starts[i] == 1, f"{i} was complete before the kill but ran again"
        elif i in running_at_kill:
            assert starts[i] == 2  # cut off in flight, then run again (same key)
        else:
            assert starts[i] == 1
    assert starts["plan"] == 1 and starts["collect"] == 1
    # The side effect of each instance happened exactly once, deduplicated on its key.
    effects = sorted(p.name.split("__")[0] for p in project.effects.iterdir())
    assert effects == sorted(ids)
    keys = {e["task"]: e["key"] for e in project.executions() if e["task"] in running_at_kill}
    assert all(e["key"] == keys[e["task"]] for e in project.executions()
               if e["task"] in running_at_kill)

    # Downstream: all 100 reports, in order, and expressions into them.
    out = json.loads((project.run_dir("r1").task_dir("collect") / "output.json").read_text())
    assert out["output"]["count"] == n
    assert out["output"]["indices"] == list(range(n))
    assert out["output"]["with"] == {"first": "part-000", "last_square": (n - 1) ** 2}
    group = json.loads((project.run_dir("r1").task_dir("work") / "output.json").read_text())
    assert [rep["output"]["index"] for rep in group["output"]] == list(range(n))

    after = project.status("r1")
    assert after["status"] == "complete"
    assert all(t["status"] == "complete" for t in after["tasks"])
    assert [t["id"] for t in after["tasks"] if t.get("parent") == "work"] == ids
    assert len(records(project, "r1", "group_ended")) == 1
    check_run_files(project.run_dir("r1"))


# --------------------------------------------------------------------------- expansion


def test_instances_without_a_key_are_numbered_and_see_their_item(project: Project) -> None:
    write(project, f"""\
name: fan
defaults: {{retries: 0}}
tasks:
  plan:
    command: {json.dumps(wave(project, "plan", "3"))}
  work:
    needs: plan
    foreach: ${{{{ tasks.plan.output.subtasks }}}}
    command: {json.dumps(wave(project, "work"))}
    env: {{ITEM_NAME: "${{{{ item.name }}}}"}}
  collect:
    needs: work
    command: {json.dumps(wave(project, "collect"))}
""")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    st = rows(project, "r1")
    assert [t for t in st if t.startswith("work.")] == ["work.0", "work.1", "work.2"]
    assert [st[f"work.{i}"]["parent"] for i in range(3)] == ["work"] * 3
    assert st["work"]["group"] == "foreach" and st["work"]["children"] == 3
    packet = json.loads((project.run_dir("r1").task_dir("work.2") / "input.json").read_text())
    assert packet["item"] == {"name": "part-002", "n": 2} and packet["index"] == 2
    out = json.loads((project.run_dir("r1").task_dir("collect") / "output.json").read_text())
    assert out["output"]["names"] == ["part-000", "part-001", "part-002"]


def test_more_items_than_limits_fanout_fails_the_task_before_any_instance(project: Project) -> None:
    write(project, f"""\
name: fan
defaults: {{retries: 0}}
limits: {{fanout: 4}}
tasks:
  plan:
    command: {json.dumps(wave(project, "plan", "5"))}
  work:
    needs: plan
    foreach: ${{{{ tasks.plan.output.subtasks }}}}
    command: {json.dumps(wave(project, "work"))}
  collect:
    needs: work
    command: {json.dumps(wave(project, "collect"))}
""")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert records(project, "r1", "tasks_expanded") == []
    st = rows(project, "r1")
    assert st["work"]["status"] == "failed"
    assert "5 items is more than limits.fanout (4)" in st["work"]["error"]["message"]
    assert st["collect"]["status"] == "skipped"
    assert set(events(project, "start")) == {"plan"}


def test_a_planner_report_that_breaks_its_schema_is_refused_before_any_fanout(
        project: Project) -> None:
    skill = project.root / "skills" / "planner"
    (skill / "assets").mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        "---\nname: planner\ndescription: Splits the work into subtasks. Use first.\n"
        "metadata:\n  agentctl.output: assets/output.schema.json\n---\nPlan the work.\n")
    (skill / "assets" / "output.schema.json").write_text(json.dumps({
        "type": "object", "required": ["subtasks"],
        "properties": {"subtasks": {"type": "array", "items": {"type": "object"}}}}))
    write(project, f"""\
name: fan
defaults: {{retries: 0}}
tasks:
  plan:
    skill: planner
    command: {json.dumps(wave(project, "plan", "3", "bad"))}
  work:
    needs: plan
    foreach: ${{{{ tasks.plan.output.subtasks }}}}
    command: {json.dumps(wave(project, "work"))}
  collect:
    needs: work
    command: {json.dumps(wave(project, "collect"))}
""")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    st = rows(project, "r1")
    assert st["plan"]["status"] == "failed"
    assert st["plan"]["error"]["category"] == "invalid_output"
    assert "subtasks" in st["plan"]["error"]["message"]
    assert records(project, "r1", "tasks_expanded") == []
    assert st["work"]["status"] == "skipped"
    assert st["work"]["error"]["category"] == "upstream_failed"
    assert "needs 'plan', which failed" in st["work"]["error"]["message"]
    assert st["collect"]["status"] == "skipped"
    assert not any(t.startswith("work.") for t in st)
    assert set(events(project, "start")) == {"plan"}
    # The refused report is kept for a person, but never committed as the task's output.
    assert not (project.run_dir("r1").task_dir("plan") / "output.json").exists()


def failing_instance_pipeline(project: Project) -> Path:
    """Instance work.2 fails until the returned file exists; work's skill has a schema."""
    ok = project.root / "ok"
    skill = project.root / "skills" / "worker"
    (skill / "assets").mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        "---\nname: worker\ndescription: Works on one subtask.\n"
        "metadata:\n  agentctl.output: assets/output.schema.json\n---\nWork.\n")
    (skill / "assets" / "output.schema.json").write_text(json.dumps({
        "type": "object", "required": ["index"], "properties": {"index": {"type": "integer"}}}))
    write(project, f"""\
name: fan
defaults: {{retries: 0}}
tasks:
  plan:
    command: {json.dumps(wave(project, "plan", "4"))}
  work:
    needs: plan
    skill: worker
    foreach: ${{{{ tasks.plan.output.subtasks }}}}
    command: {json.dumps(wave(project, "work", "fail=2", f"unless={ok}"))}
  collect:
    needs: work
    command: {json.dumps(wave(project, "collect"))}
""")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    st = rows(project, "r1")
    assert st["work.2"]["status"] == "failed"
    assert st["work"]["status"] == "failed"
    assert st["work"]["error"]["message"] == "1 of 4 instances did not complete: work.2"
    assert st["collect"]["status"] == "skipped"
    return ok


def assert_retried_once(project: Project) -> None:
    st = rows(project, "r1")
    assert all(t["status"] == "complete" for t in st.values()), st
    assert st["work.2"]["attempts"] == 2
    starts = events(project, "start")
    assert starts["work.2"] == 2
    assert all(starts[f"work.{i}"] == 1 for i in (0, 1, 3)), starts
    assert len(records(project, "r1", "tasks_expanded")) == 1
    out = json.loads((project.run_dir("r1").task_dir("collect") / "output.json").read_text())
    assert out["output"]["indices"] == [0, 1, 2, 3]


def test_resume_retry_failed_reruns_only_the_failed_instance(project: Project) -> None:
    failing_instance_pipeline(project).touch()
    r = project.cli("resume", "r1", "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_retried_once(project)


def test_retrying_one_instance_reopens_its_group(project: Project) -> None:
    failing_instance_pipeline(project).touch()
    r = project.cli("retry", "r1", "work.2")
    assert r.returncode == 0, r.stdout + r.stderr
    st = rows(project, "r1")
    assert st["work"]["status"] == "pending" and st["collect"]["status"] == "pending"
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_retried_once(project)


def test_a_person_completes_a_failed_instance_with_a_report_its_schema_accepts(
        project: Project) -> None:
    failing_instance_pipeline(project)
    bad, good = project.root / "bad.json", project.root / "good.json"
    bad.write_text(json.dumps({"status": "COMPLETE", "summary": "by hand",
                               "output": {"index": "two", "name": "part-002", "square": 4}}))
    good.write_text(json.dumps({"status": "COMPLETE", "summary": "by hand",
                                "output": {"index": 2, "name": "part-002", "square": 4}}))
    r = project.cli("complete", "r1", "work.2", "--output", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "does not validate: output.index: 'two' is not of type 'integer'" in r.stderr
    r = project.cli("complete", "r1", "work.2", "--output", str(good))
    assert r.returncode == 0, r.stdout + r.stderr
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    st = rows(project, "r1")
    assert all(t["status"] == "complete" for t in st.values()), st
    assert events(project, "start")["work.2"] == 1  # a person's report, not a new run
    out = json.loads((project.run_dir("r1").task_dir("collect") / "output.json").read_text())
    assert out["output"]["indices"] == [0, 1, 2, 3]


def test_retrying_the_group_reruns_its_failed_instances(project: Project) -> None:
    failing_instance_pipeline(project).touch()
    r = project.cli("retry", "r1", "work")
    assert r.returncode == 0, r.stdout + r.stderr
    r = project.cli("resume", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_retried_once(project)
    assert [rec["task"] for rec in records(project, "r1", "group_reopened")] == ["work"]


# --------------------------------------------------------------------------- conditions


def test_when_true_false_and_failing(project: Project) -> None:
    agent = json.dumps(wave(project, "plan", "2"))
    write(project, f"""\
name: cond
inputs:
  mode: {{default: full}}
defaults: {{retries: 0}}
tasks:
  plan:
    command: {agent}
  go:
    needs: plan
    when: ${{{{ inputs.mode == 'full' && tasks.plan.output.subtasks[1].n >= 1 }}}}
    command: {agent}
  stop:
    needs: plan
    when: "!(inputs.mode == 'full') || tasks.plan.status != 'COMPLETE'"
    command: {agent}
  after-stop:
    needs: stop
    command: {agent}
  after-go:
    needs: [go, plan]
    command: {agent}
""")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    st = rows(project, "r1")
    assert project.status("r1")["status"] == "complete"
    assert st["go"]["status"] == "complete" and st["after-go"]["status"] == "complete"
    assert st["stop"]["status"] == "skipped" and st["stop"]["error"] is None
    assert st["after-stop"]["status"] == "skipped" and st["after-stop"]["error"] is None
    skipped = {rec["task"]: rec for rec in records(project, "r1", "task_skipped")}
    assert skipped["stop"]["reason"] == ("condition is false: !(inputs.mode == 'full') || "
                                       "tasks.plan.status != 'COMPLETE'")
    assert skipped["after-stop"]["reason"] == "needs 'stop', which was skipped"
    assert "category" not in skipped["stop"] and "category" not in skipped["after-stop"]
    assert set(events(project, "start")) == {"plan", "go", "after-go"}

    # The same pipeline with the input that flips both conditions.
    project.exec_log.unlink()
    r = project.cli("run", "p.yaml", "--run-id", "r2", "-i", "mode=quick")
    assert r.returncode == 0, r.stdout + r.stderr
    st = rows(project, "r2")
    assert st["go"]["status"] == "skipped" and st["after-go"]["status"] == "skipped"
    assert st["stop"]["status"] == "complete" and st["after-stop"]["status"] == "complete"


def test_a_condition_that_cannot_be_evaluated_fails_the_task(project: Project) -> None:
    agent = json.dumps(wave(project, "plan", "2"))
    write(project, f"""\
name: cond
defaults: {{retries: 0}}
tasks:
  plan:
    command: {agent}
  odd:
    needs: plan
    when: tasks.plan.output.missing == 1
    command: {agent}
  after:
    needs: odd
    command: {agent}
""")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    st = rows(project, "r1")
    assert st["odd"]["status"] == "failed"
    assert st["odd"]["error"]["message"].startswith("when: ")
    assert "tasks.plan.output.missing" in st["odd"]["error"]["message"]
    assert st["after"]["status"] == "skipped"
    assert st["after"]["error"]["category"] == "upstream_failed"
    assert set(events(project, "start")) == {"plan"}


# --------------------------------------------------------------------------- validate


def validate_errors(project: Project, text: str) -> list[str]:
    write(project, text)
    r = project.cli("validate", "p.yaml")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return [line for line in r.stderr.splitlines() if ": error: " in line]


def test_validate_refuses_what_it_can_see_statically(project: Project) -> None:
    errors = validate_errors(project, """\
name: bad
tasks:
  plan:
    command: [python3, plan.py]
  stray:
    needs: plan
    command: [echo, "${{ item.name }}"]
  two:
    needs: plan
    foreach: "${{ tasks.plan.output.a }} and ${{ tasks.plan.output.b }}"
    command: [echo, "${{ item }}"]
  text:
    needs: plan
    foreach: tasks.plan.output.subtasks
    command: [echo, "${{ item }}"]
  cond:
    needs: plan
    when: ${{ tasks.plan.output.ok && colour == 'red' }}
    command: [echo, hi]
  cond2:
    needs: plan
    when: tasks.other.output.ok
    command: [echo, hi]
  review:
    needs: plan
    command: [echo, hi]
    loop:
      maker: {command: [echo, make]}
      checker: {command: [echo, check]}
      until: checker.output.verdict == 'pass' && verdict == 'ok'
  again:
    loop:
      maker: {command: [echo, make]}
      checker: {command: [echo, "${{ loop.maker.output }}"]}
      until: loop.iteration > 2
  half:
    needs: plan
    when: ${{ tasks.plan.status }} == 'COMPLETE'
    command: [echo, hi]
  twice:
    loop:
      maker: {command: [echo, make]}
      checker: {command: [echo, check]}
      until: ${{ iteration > 1 }} && ${{ iteration > 2 }}
""")
    expected = [
        "p.yaml:7:21: error: tasks.stray.command[1]: unknown name 'item' in expression "
        "(use inputs.<name> or tasks.<id>.output)",
        "p.yaml:10:14: error: tasks.two.foreach: must be one ${{ }} expression naming a list, "
        "e.g. ${{ tasks.plan.output.subtasks }}",
        "p.yaml:14:14: error: tasks.text.foreach: must be one ${{ }} expression naming a list, "
        "e.g. ${{ tasks.plan.output.subtasks }}",
        "p.yaml:18:11: error: tasks.cond.when: unknown name 'colour' in expression "
        "(use inputs.<name> or tasks.<id>.output)",
        "p.yaml:22:11: error: tasks.cond2.when: unknown task 'other'",
        "p.yaml:24:3: error: tasks.review: a task with a 'loop' runs its maker and checker; "
        "it cannot also have 'command', 'skill' or 'runner'",
        "p.yaml:30:14: error: tasks.review.loop.until: unknown name 'verdict' in expression "
        "(use checker, iteration, maker, inputs.<name> or tasks.<id>.output)",
        "p.yaml:35:14: error: tasks.again.loop.until: unknown name 'loop' in expression "
        "(use checker, iteration, maker, inputs.<name> or tasks.<id>.output)",
        # Text around a condition's ${{ }} would make it a string, always true: refused.
        "p.yaml:38:11: error: tasks.half.when: must be one condition, with or without one "
        "${{ }} around all of it, e.g. inputs.mode == 'full' && tasks.plan.status == 'COMPLETE'",
        "p.yaml:44:14: error: tasks.twice.loop.until: must be one condition, with or without one "
        "${{ }} around all of it, e.g. inputs.mode == 'full' && tasks.plan.status == 'COMPLETE'",
    ]
    assert errors == expected


# --------------------------------------------------------------------------- the bundled example

EXAMPLE_SRC = {
    "engine.py": '"""The engine."""\n\n\ndef run(x):\n    # TODO: handle errors\n'
                 + "".join(f"    x += {i}\n" for i in range(70)) + "    return x\n",
    "small.py": '"""Small."""\n\n\ndef add(a, b):\n    """Add."""\n    return a + b\n',
    "pkg/api.py": "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(6)),
    "pkg/util.py": '"""Util."""\n\n\ndef one():\n    """One."""\n    return 1\n',
    "cli.py": '"""CLI."""\n\n\ndef main():\n    """Main."""\n' + "    pass\n" * 20,
    ".venv/skipped.py": "x = 1\n",
    "notes.txt": "not python\n",
}


def test_the_fanout_review_example_runs_offline_end_to_end(project: Project) -> None:
    """pipelines/fanout-review.yaml, as a user runs it (from the repository, no key): the
    fan-out inspects each file, the loop passes on its second iteration after the checker's
    feedback, triage runs on offline/echo; status, logs and report show it all."""
    src = project.root / "src"
    for rel, text in EXAMPLE_SRC.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "agentctl", *args, "--state-dir", str(project.state)],
                              cwd=REPO, env=project.env, capture_output=True, text=True,
                              timeout=120)

    assert cli("validate", "pipelines/fanout-review.yaml").returncode == 0
    r = cli("run", "pipelines/fanout-review.yaml", "-i", f"path={src}", "--run-id", "ex")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "expand   inspect into 5 instance(s): inspect.cli, inspect.engine, " in r.stdout
    assert "complete summary after 2 iteration(s) (passed)" in r.stdout
    assert "start    wave 3 triage attempt 1 model=offline/echo" in r.stdout

    st = rows(project, "ex")
    names = ["cli", "engine", "pkg-api", "pkg-util", "small"]
    assert [t for t in st if t.startswith("inspect.")] == [f"inspect.{n}" for n in names]
    assert st["inspect"]["group"] == "foreach" and st["inspect"]["children"] == 5
    assert st["summary"]["exit_reason"] == "passed" and st["summary"]["children"] == 4
    assert st["triage"]["status"] == "complete" and st["triage"]["tokens"] > 0
    assert all(t["status"] == "complete" for t in st.values())

    run = project.run_dir("ex")
    first = json.loads((run.task_dir("summary.maker.1") / "output.json").read_text())["output"]
    check1 = json.loads((run.task_dir("summary.checker.1") / "output.json").read_text())["output"]
    final = json.loads((run.task_dir("summary") / "output.json").read_text())["output"]
    assert len(first["covered"]) == 3 and first["risks"] == []
    assert check1["verdict"] == "revise"
    assert sorted(check1["missing"]) == sorted(set(final["covered"]) - set(first["covered"]))
    assert [r["path"].removeprefix(str(src) + "/") for r in final["risks"]] == ["engine.py", "pkg/api.py"]
    assert "1 TODO(s)" in final["text"] and "## Risks" in final["text"]
    triage = json.loads((run.task_dir("triage") / "input.json").read_text())
    assert triage["with"]["risks"] == final["risks"]

    # logs and report show the instances and the iterations.
    logs = cli("logs", "ex")
    assert logs.returncode == 0, logs.stderr
    for tid in ("inspect.engine", "summary.maker.2", "summary.checker.2"):
        assert tid in logs.stdout
    assert "5 instances: inspect.cli, inspect.engine, inspect.pkg-api" in logs.stdout
    assert "iteration 2: maker summary.maker.2, checker summary.checker.2" in logs.stdout
    assert "exit_reason=passed" in logs.stdout
    one = cli("logs", "ex", "inspect.pkg-api")
    assert one.returncode == 0, one.stderr
    assert '"path": "pkg/api.py"' in one.stdout or "pkg/api.py" in one.stdout
    out = project.root / "report.html"
    rep = cli("report", "ex", "--output", str(out))
    assert rep.returncode == 0, rep.stderr
    page = out.read_text()
    for tid in ("inspect.small", "summary.maker.1", "summary.checker.2"):
        assert f'<details class="lane child1" id="task-{tid}"' in page  # under its group
    assert "loop: 4 task(s), stopped: passed" in page


def test_validate_checks_paths_into_a_fanouts_reports(project: Project) -> None:
    skill = project.root / "skills" / "worker"
    (skill / "assets").mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        "---\nname: worker\ndescription: Works on one subtask.\n"
        "metadata:\n  agentctl.output: assets/output.schema.json\n---\nWork.\n")
    (skill / "assets" / "output.schema.json").write_text(json.dumps({
        "type": "object", "additionalProperties": False, "required": ["n"],
        "properties": {"n": {"type": "integer"}}}))
    errors = validate_errors(project, """\
name: bad
tasks:
  plan:
    command: [echo, plan]
  work:
    needs: plan
    skill: worker
    foreach: ${{ tasks.plan.output.items }}
    command: [echo, "${{ item }}"]
  use:
    needs: work
    command: [echo, "${{ tasks.work.output.n }}", "${{ tasks.work.output[0].output.n }}",
              "${{ tasks.work.output[1].summary }}", "${{ tasks.work.output[0].output.m }}"]
  rev:
    loop:
      maker: {skill: worker}
      checker: {command: [echo, check]}
  after:
    needs: rev
    when: tasks.rev.output.n > 1 && tasks.rev.output.m
    command: [echo, hi]
""")
    assert errors == [
        "p.yaml:12:21: error: tasks.use.command[1]: tasks.work.output is a list; it has no "
        "field 'n' (index it first: [0]) (from the output schema of task work's skill)",
        "p.yaml:13:54: error: tasks.use.command[4]: tasks.work.output[0].output has no field 'm' "
        "(fields: n) (from the output schema of task work's skill)",
        # A loop's output is its maker's: checked against the maker's skill.
        "p.yaml:20:11: error: tasks.after.when: tasks.rev.output has no field 'm' (fields: n) "
        "(from the output schema of task rev's skill)",
    ]
