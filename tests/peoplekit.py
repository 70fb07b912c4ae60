"""Helpers for the people-in-the-loop and failure-category tests (test_people, test_categories).

They sit on tests/harness.py (a Project: a workspace, its state dir, the real CLI as a
subprocess) and drive tests/agents/people_agent.py, whose executions are logged one JSON
line each, so "ran once" or "never ran" is counted, not assumed.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from harness import PY, Project, wait_for

from agentctl import views
from agentctl.errors import AgentctlError

AGENT = Path(__file__).parent / "agents" / "people_agent.py"

COUNTER_SCHEMA = {"type": "object", "required": ["n"],
                  "properties": {"n": {"type": "integer"}}, "additionalProperties": False}


def me() -> str:
    """The name agentctl records as `by` (the OS user)."""
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def agent(project: Project, mode: str, *args: str) -> list[str]:
    return [PY, str(AGENT), str(project.root / "people.log"), mode, *args]


def add_counter_skill(project: Project) -> None:
    """skills/counter: an output schema {"n": integer}, so reports can break it."""
    d = project.root / "skills" / "counter"
    (d / "assets").mkdir(parents=True, exist_ok=True)
    (d / "SKILL.md").write_text(
        "---\nname: counter\ndescription: Counts things. Used by the tests.\n"
        "metadata:\n  agentctl.output: assets/output.schema.json\n---\nCount the things.\n")
    (d / "assets" / "output.schema.json").write_text(json.dumps(COUNTER_SCHEMA))


def ran(project: Project, task: str | None = None) -> list[dict[str, Any]]:
    """The agent's executions, in order (optionally of one task)."""
    try:
        lines = (project.root / "people.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = [json.loads(line) for line in lines if line.strip()]
    return [r for r in rows if task is None or r["task"] == task]


def view(project: Project, run_id: str) -> dict[str, Any]:
    """What `agentctl status RUN --json` prints, read in this process (the same function),
    so that polling does not start a Python per look. Tests check the real command too."""
    run = project.run_dir(run_id)
    return views.run_json(run, views.load(run))


def tasks(project: Project, run_id: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in view(project, run_id)["tasks"]}


def records(project: Project, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in project.wal(run_id) if r["type"] == kind]


def write_report(project: Project, name: str, report: Any) -> Path:
    path = project.root / name
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    return path


def one_line_error(stderr: str) -> str:
    """A user error is one line, compiler style, never a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("agentctl: error: "), stderr
    return lines[0]


def wait_status(project: Project, run_id: str, task: str, status: str,
                timeout: float = 60.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        try:
            row = tasks(project, run_id).get(task)
        except (AgentctlError, OSError):
            return None  # the run is not created yet
        return row if row and row["status"] == status else None

    return wait_for(check, f"task '{task}' of {run_id} to be {status}", timeout=timeout,
                    every=0.05)


def wait_running(project: Project, run_id: str, task: str) -> None:
    """The attempt is durably started and the agent has begun executing it."""
    def check() -> bool:
        try:
            t = project.replay(run_id).tasks.get(task)
        except Exception:
            return False
        return bool(t and t.status == "running"
                    and any(r["attempt"] == t.attempt for r in ran(project, task)))

    wait_for(check, f"'{task}' of {run_id} to be running", every=0.05)
