"""Helpers for the llm runner's tests: a project with skills, and the real CLI run in-process.

In-process (typer's CliRunner) so that every run of a test session shares one litellm import
(seconds); stdout and stderr are kept apart. Tests that must own a process (SIGKILL, what gets
imported, environment-derived redaction) use ``harness.Project`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from agentctl import cli, store
from agentctl.state import RunState, replay

FINDINGS_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["findings", "confidence"],
    "properties": {
        "findings": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["file", "note"],
            "properties": {"file": {"type": "string", "minLength": 1},
                           "note": {"type": "string", "minLength": 3}}}},
        "confidence": {"type": "number", "minimum": 0.5, "maximum": 1},
        "kind": {"enum": ["bug", "smell"]},
    },
}
EXPLORER_BODY = "You explore a codebase from one angle and report findings with file paths."


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


class LLMProject:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.skill("explorer", EXPLORER_BODY, FINDINGS_SCHEMA)

    def skill(self, name: str, body: str, schema: dict[str, Any] | None = None) -> None:
        d = self.root / "skills" / name
        (d / "assets").mkdir(parents=True, exist_ok=True)
        meta = "metadata:\n  agentctl.output: assets/output.schema.json\n" if schema else ""
        (d / "SKILL.md").write_text(f"---\nname: {name}\ndescription: The {name} role, for "
                                    f"tests. Use in tests.\n{meta}---\n{body}\n")
        if schema:
            (d / "assets" / "output.schema.json").write_text(json.dumps(schema))

    def pipeline(self, tasks: dict[str, dict[str, Any]], *, models: dict[str, list[str]] | None = None,
                 defaults: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                 name: str = "t") -> Path:
        body: dict[str, Any] = {"name": name,
                                "defaults": {"model": "offline/echo", "timeout": "120s",
                                             "retries": 0, "backoff": "10ms", **(defaults or {})}}
        if limits:
            body["limits"] = limits
        if models:
            body["models"] = models
        body["tasks"] = {tid: {"skill": "explorer", **spec} for tid, spec in tasks.items()}
        (self.root / "pipelines").mkdir(exist_ok=True)
        path = self.root / "pipelines" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    # ------------------------------------------------------------------ the CLI, in-process

    def cli(self, *args: str) -> Result:
        r = CliRunner().invoke(cli.app, [*args, "--state-dir", str(self.state)])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return Result(r.exit_code, r.stdout, r.stderr)

    def run(self, pipeline: Path, *args: str) -> tuple[Result, str]:
        r = self.cli("run", str(pipeline), *args)
        runs = store.StateDir(self.state).list_runs()
        return r, (runs[-1].run_id if runs else "")

    def status(self, run_id: str) -> dict[str, Any]:
        r = self.cli("status", run_id, "--json")
        assert r.code == 0, r.stderr
        return dict(json.loads(r.stdout))

    # ------------------------------------------------------------------ reading a run

    def run_dir(self, run_id: str) -> store.RunDir:
        return store.StateDir(self.state).run(run_id)

    def wal(self, run_id: str) -> list[dict[str, Any]]:
        return store.scan_wal(self.run_dir(run_id).wal).records

    def calls(self, run_id: str, task: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.wal(run_id) if r["type"] == "llm_call"
                and (task is None or r["task"] == task)]

    def replay(self, run_id: str) -> RunState:
        return replay(self.wal(run_id))

    def exchange(self, run_id: str, task: str, attempt: int = 1) -> dict[str, Any]:
        path = self.run_dir(run_id).attempt_file(task, attempt, "exchange.json")
        return dict(json.loads(path.read_text()))

    def call_files(self, run_id: str, task: str, attempt: int = 1) -> list[dict[str, Any]]:
        """Every request the attempt made (exchange.json's ``calls``)."""
        return list(self.exchange(run_id, task, attempt)["calls"])

    def output(self, run_id: str, task: str) -> dict[str, Any]:
        return dict(json.loads((self.run_dir(run_id).task_dir(task) / "output.json").read_text()))

    def rows(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {t["id"]: t for t in self.status(run_id)["tasks"]}
