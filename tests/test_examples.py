"""The bundled example and the skills agentctl ships: they load cleanly and pass the strict
Agent Skills rules, and the layout script's report meets the explorer's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from skillspec import strict_problems

from agentctl.definitions import load_pipeline
from agentctl.reports import validate_report
from agentctl.skills import load_output_schema, load_skill

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "skills").glob("*/SKILL.md"))


def test_the_example_pipeline_loads_without_warnings() -> None:
    defn = load_pipeline(REPO / "pipelines" / "repo-review.yaml")
    assert defn.warnings == []
    tasks = defn.pipeline.tasks
    assert list(tasks) == ["explore-layout", "explore-api", "explore-risks", "plan", "review"]
    assert defn.runner_of("explore-layout") == "command"
    assert {defn.runner_of(t) for t in list(tasks)[1:]} == {"llm"}
    assert tasks["explore-api"].with_["angle"] != tasks["explore-risks"].with_["angle"]
    assert all(defn.effects_of(t).value == "read-only" for t in tasks)
    assert defn.pipeline.defaults.model == "offline/echo"
    assert set(defn.skills) == {"explorer", "planner", "reviewer"}
    assert all(s.output_schema for s in defn.skills.values())


def test_the_example_skills_are_shipped_with_output_schemas() -> None:
    assert {"explorer", "planner", "reviewer"} <= {p.parent.name for p in SHIPPED}
    for name in ("explorer", "planner", "reviewer"):
        skill = load_skill(REPO / "skills" / name / "SKILL.md")
        assert skill.metadata["agentctl.output"] == "assets/output.schema.json"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_skills_pass_the_strict_rules(path: Path) -> None:
    # Every skill agentctl ships, not only the example's: files agentctl writes pass the spec.
    assert strict_problems(path) == []
    skill = load_skill(path)
    assert skill.warnings == []
    load_output_schema(skill)
    if "agentctl.output" in skill.metadata:
        assert skill.output_schema is not None
        jsonschema.Draft202012Validator.check_schema(skill.output_schema)


def run_layout(tmp_path: Path, target: Path) -> tuple[int, dict[str, object]]:
    out = tmp_path / "report.json"
    env = {**os.environ, "AGENTCTL_OUTPUT": str(out), "AGENTCTL_HEARTBEAT": str(tmp_path / "beat")}
    r = subprocess.run([sys.executable, str(REPO / "skills/explorer/scripts/layout.py"), str(target)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout == "" and r.stderr == ""
    return r.returncode, json.loads(out.read_text())


def test_the_layout_script_reports_to_the_explorer_contract(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "core.py").write_text("x = 1\n" * 200)
    (project / "tests").mkdir()
    (project / "tests" / "test_core.py").write_text("def test(): pass\n")
    (project / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref\n")  # skipped
    code, raw = run_layout(tmp_path, project)
    assert code == 0
    schema = load_output_schema_of("explorer")
    report, problems = validate_report(raw, schema)
    assert problems == [] and report is not None
    assert report["status"] == "COMPLETE"
    titles = [f["title"] for f in report["output"]["findings"]]
    assert titles[0] == "3 files, 3 top-level entries"
    assert "Mostly Python" in titles
    assert "1 test files for 1 source files" in titles
    assert "Project files: pyproject.toml" in titles


def test_the_layout_script_blocks_on_a_missing_directory(tmp_path: Path) -> None:
    code, raw = run_layout(tmp_path, tmp_path / "nowhere")
    assert code == 1
    report, problems = validate_report(raw, load_output_schema_of("explorer"))
    assert problems == [] and report is not None
    assert report["status"] == "BLOCKED" and report["blockers"]


def load_output_schema_of(name: str) -> dict[str, object]:
    schema = json.loads((REPO / "skills" / name / "assets" / "output.schema.json").read_text())
    assert isinstance(schema, dict)
    return schema
