"""``needs`` patterns: an entry with a glob character is expanded over the task ids at load
time, and everything downstream (cycles, waves, expressions, validate, a run) sees the list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import Project

from agentctl.definitions import load_pipeline
from agentctl.engine import load_frozen
from agentctl.errors import DefinitionError


def pipeline(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def diagnostics(path: Path) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        load_pipeline(path)
    return [str(d).replace(str(path), path.name) for d in info.value.diagnostics]


def needs(path: Path) -> dict[str, list[str]]:
    return {tid: t.needs for tid, t in load_pipeline(path).pipeline.tasks.items()}


def test_a_pattern_expands_to_the_matching_tasks_in_file_order(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          part-2: {command: [a]}
          other: {command: [a]}
          part-10: {command: [a]}
          part-1: {command: [a]}
          collect: {command: [c], needs: "part-*"}
          mixed: {command: [c], needs: [other, "part-?", part-10, "part-1*"]}
        """)
    got = needs(p)
    assert got["collect"] == ["part-2", "part-10", "part-1"]  # file order, not sorted
    # In place of the pattern; a task listed and matched (part-10, part-1) is needed once.
    assert got["mixed"] == ["other", "part-2", "part-1", "part-10"]
    assert load_pipeline(p).warnings == []  # merged silently


def test_fnmatch_semantics_case_sensitive(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          w0-t0: {command: [a]}
          w0-t1: {command: [a]}
          w1-t0: {command: [a]}
          W0-t2: {command: [a]}
          classes: {command: [c], needs: ["w[01]-t0"]}
          negated: {command: [c], needs: ["w[!1]-*"]}
          upper: {command: [c], needs: "W*"}
        """)
    got = needs(p)
    assert got["classes"] == ["w0-t0", "w1-t0"]
    assert got["negated"] == ["w0-t0", "w0-t1"]
    assert got["upper"] == ["W0-t2"]


def test_a_pattern_never_matches_the_task_that_declares_it(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          review-api: {command: [a]}
          review-all: {command: [a], needs: "review-*"}
          review-db: {command: [a]}
        """)
    assert needs(p)["review-all"] == ["review-api", "review-db"]


def test_a_pattern_that_matches_only_its_own_task_is_an_error(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          solo-1: {command: [a], needs: ["solo-*"]}
        """)
    assert diagnostics(p) == [
        "p.yaml:3:34: error: tasks.solo-1.needs: pattern 'solo-*' matches no task but 'solo-1' "
        "itself (a pattern never matches the task that declares it)"]


def test_a_pattern_that_matches_nothing_is_an_error_at_its_place(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          explore-api: {command: [a]}
          explore-db: {command: [a]}
          plan:
            command: [b]
            needs:
              - explore-api
              - "explor-*"
          review:
            command: [c]
            needs: "zzz?"
        """)
    assert diagnostics(p) == [
        "p.yaml:9:9: error: tasks.plan.needs: pattern 'explor-*' matches no task (task ids like "
        "it: explore-db, explore-api)",
        "p.yaml:12:12: error: tasks.review.needs: pattern 'zzz?' matches no task",
    ]


def test_a_cycle_through_a_pattern_names_the_pattern(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          gather: {command: [a], needs: "step-*"}
          step-1: {command: [a]}
          step-2: {command: [a], needs: gather}
        """)
    assert diagnostics(p) == [
        "p.yaml:3:33: error: tasks.gather.needs: tasks form a cycle: gather -> step-2 -> gather "
        "(gather needs step-2 through 'step-*')"]


def test_expressions_may_name_a_task_reached_only_through_a_pattern(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          part-a: {command: [a]}
          part-b: {command: [a]}
          lone: {command: [a]}
          collect:
            command: [c, "${{ tasks.part-b.output }}", "${{ tasks.part-a.summary }}"]
            needs: "part-*"
        """)
    assert needs(p)["collect"] == ["part-a", "part-b"]
    bad = pipeline(tmp_path, Path(p).read_text().replace("tasks.part-a.summary", "tasks.lone.summary"))
    assert diagnostics(bad) == [
        "p.yaml:7:48: error: tasks.collect.command[2]: 'tasks.lone.summary' refers to task 'lone', "
        "which is not in this task's needs"]


def test_an_exact_id_wins_over_a_pattern(tmp_path: Path) -> None:
    # Task ids cannot hold glob characters, but a need that is exactly a (refused) id is that
    # id: the one error is the id's, not a second one about a pattern.
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          "a*": {command: [a]}
          a1: {command: [a]}
          b: {command: [b], needs: ["a*"]}
        """)
    assert diagnostics(p) == [
        "p.yaml:3:3: error: task id 'a*' must be letters, digits, '_' and '-' (safe as a file name)"]


def test_names_listed_twice_still_warn_next_to_a_pattern(tmp_path: Path) -> None:
    p = pipeline(tmp_path, """\
        name: x
        tasks:
          a1: {command: [a]}
          a2: {command: [a]}
          b: {command: [b], needs: [a1, "a*", a1]}
        """)
    defn = load_pipeline(p)
    assert defn.pipeline.tasks["b"].needs == ["a1", "a2"]
    assert [str(w).replace(str(p), "p.yaml") for w in defn.warnings] == [
        "p.yaml:5:39: warning: tasks.b.needs: 'a1' is listed twice"]


def test_patterns_and_names_give_the_same_pipeline(tmp_path: Path) -> None:
    waves = [[f"w{w}-t{i}" for i in range(4)] for w in range(3)]
    named, globbed = ["name: x", "tasks:"], ["name: x", "tasks:"]
    for w, ids in enumerate(waves):
        for tid in ids:
            named.append(f"  {tid}: {{runner: noop"
                         + (f", needs: [{', '.join(waves[w - 1])}]}}" if w else "}"))
            globbed.append(f"  {tid}: {{runner: noop" + (f", needs: 'w{w - 1}-*'}}" if w else "}"))
    (tmp_path / "named.yaml").write_text("\n".join(named) + "\n")
    (tmp_path / "globbed.yaml").write_text("\n".join(globbed) + "\n")
    a, b = load_pipeline(tmp_path / "named.yaml"), load_pipeline(tmp_path / "globbed.yaml")
    assert a.pipeline.model_dump() == b.pipeline.model_dump()


def test_validate_prints_the_expanded_needs_and_waves(tmp_path: Path) -> None:
    pipeline(tmp_path, """\
        name: x
        tasks:
          explore-a: {command: [a]}
          explore-b: {command: [a]}
          plan: {command: [b], needs: "explore-*"}
          review: {command: [c], needs: ["p*", "explore-?"]}
        """)
    env = {k: v for k, v in os.environ.items() if k != "AGENTCTL_DEBUG"}
    env["COLUMNS"] = "200"
    r = subprocess.run([sys.executable, "-m", "agentctl", "validate", "p.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "p.yaml: ok (4 tasks, 0 warning(s))\n"
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in row.strip("│").split("│")] for row in rows]
    assert [(c[0], c[1], c[4]) for c in cells] == [
        ("0", "explore-a", ""), ("0", "explore-b", ""),
        ("1", "plan", "explore-a, explore-b"),
        ("2", "review", "plan, explore-a, explore-b")]


def test_a_run_gives_the_needing_task_every_matched_report(project: Project) -> None:
    p = project.pipeline({
        "part-1": {}, "part-2": {}, "part-3": {}, "other": {},
        "collect": {"needs": "part-*"},
    })
    # collect fails the first time, and gets its packet after a resume, from the frozen copy.
    flag = project.root / "fixed"
    project.behave("collect", fail_unless=str(flag))
    r = project.cli("run", str(p), "--run-id", "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    run = project.run_dir("r1")
    assert load_frozen(run).pipeline.tasks["collect"].needs == ["part-1", "part-2", "part-3"]
    flag.touch()
    r = project.cli("resume", "r1", "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(project.executions("collect")) == 2
    packet = json.loads((run.task_dir("collect") / "input.json").read_text())
    assert list(packet["needs"]) == ["part-1", "part-2", "part-3"]
    for tid in ("part-1", "part-2", "part-3"):
        report = json.loads((run.task_dir(tid) / "output.json").read_text())
        assert packet["needs"][tid]["summary"] == report["summary"] == f"{tid} attempt 1 done"
    started = next(x for x in project.wal("r1") if x["type"] == "run_started")
    assert {t["id"]: t["needs"] for t in started["tasks"]}["collect"] == ["part-1", "part-2", "part-3"]
    assert {t["id"]: t["wave"] for t in started["tasks"]}["collect"] == 1
