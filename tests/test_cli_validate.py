"""``agentctl validate`` through the real command line, in a subprocess: exit code, stdout and
stderr asserted separately."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIAGNOSTIC = re.compile(r"[^:\n]+:\d+:\d+: (error|warning): \S.*")


def validate(path: Path | str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENTCTL_DEBUG"}
    env["COLUMNS"] = "200"  # a wide table, whatever the terminal of the person running the tests
    r = subprocess.run([sys.executable, "-m", "agentctl", "validate", str(path)], cwd=cwd,
                       capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return r


def write_project(root: Path, pipeline: str) -> Path:
    skill = root / "skills" / "explorer"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text("---\nname: explorer\ndescription: Explores.\n---\nExplore.\n")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "p.yaml").write_bytes(pipeline.encode())
    return root / "pipelines" / "p.yaml"


def test_the_example_validates(tmp_path: Path) -> None:
    r = validate("pipelines/repo-review.yaml", REPO)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "pipelines/repo-review.yaml: ok (5 tasks, 0 warning(s))\n"
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in row.strip("│").split("│")] for row in rows]
    assert [(c[0], c[1], c[2]) for c in cells] == [
        ("0", "explore-layout", "command"), ("0", "explore-api", "llm"),
        ("0", "explore-risks", "llm"), ("1", "plan", "llm"), ("2", "review", "llm")]
    assert cells[3][4] == "explore-layout, explore-api, explore-risks"
    assert {c[5] for c in cells} == {"read-only"}


def test_a_broken_pipeline_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    write_project(tmp_path, """\
name: broken
inputs: {path: "."}
defaults:
  timeout: 5 minutes
tasks:
  explore:
    skill: explorr
    with: {path: "${{ inputs.pth }}"}
  plan:
    skill: explorer
    needs: [explore, review]
  review:
    skill: explorer
    needs: plan
    effects: readonly
  "../escape":
    command: [echo, hi]
""")
    r = validate("pipelines/p.yaml", tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines == [
        "pipelines/p.yaml:4:12: error: defaults.timeout: bad duration '5 minutes' (use e.g. 30s, 5m, 1h)",
        "pipelines/p.yaml:7:12: error: tasks.explore.skill: unknown skill 'explorr' (did you mean "
        "'explorer'?) (no skills/explorr/SKILL.md or skills/explorr.md)",
        "pipelines/p.yaml:8:18: error: tasks.explore.with.path: unknown input 'pth' (did you mean "
        "'path'?) (declared: path)",
        "pipelines/p.yaml:11:12: error: tasks.plan.needs: tasks form a cycle: plan -> review -> plan",
        "pipelines/p.yaml:15:14: error: tasks.review.effects: unknown effects 'readonly' (did you "
        "mean 'read-only'?) (one of: read-only, append-only, mutating, irreversible)",
        "pipelines/p.yaml:16:3: error: task id '../escape' contains a path separator; task ids "
        "name directories",
        "6 error(s)",
    ]
    assert all(DIAGNOSTIC.fullmatch(line) for line in lines[:-1])


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    bomb = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    p = write_project(tmp_path, "name: x\n" + "\n".join(bomb) + "\ntasks: {t: {command: [a]}}\n")
    r = validate(p, tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == (f"{p}:2:5: error: YAML anchors and aliases are not allowed in agentctl "
                        "files (found &a0); write the value out\n1 error(s)\n")


def test_a_non_utf8_file(tmp_path: Path) -> None:
    p = write_project(tmp_path, "")
    p.write_bytes(b"name: x\ntasks:\n  t: {command: [\xff]}\n")
    r = validate("pipelines/p.yaml", tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "pipelines/p.yaml:3:1: error: file is not valid UTF-8 (byte 31)\n1 error(s)\n"


def test_warnings_do_not_fail_validation(tmp_path: Path) -> None:
    write_project(tmp_path, "name: x\ntasks:\n  a: {skill: explorer}\n")
    (tmp_path / "skills" / "explorer" / "SKILL.md").write_text(
        "---\nname: explorer\ndescription: Explores. Triggers on: 'x'.\n---\nGo.\n")
    r = validate("pipelines/p.yaml", tmp_path)
    assert r.returncode == 0
    assert "explorer" in r.stdout
    assert r.stderr.splitlines() == [
        "skills/explorer/SKILL.md: warning: frontmatter is not valid YAML (line 3); read it "
        "leniently as 'key: value' lines",
        "pipelines/p.yaml: ok (1 tasks, 1 warning(s))",
    ]


def test_a_missing_file(tmp_path: Path) -> None:
    r = validate("nope.yaml", tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "nope.yaml: error: no such file\n1 error(s)\n"
