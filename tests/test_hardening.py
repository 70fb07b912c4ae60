"""What an adversarial review found, kept found: hostile report files, secrets that JSON
escapes, usage errors, unusable state dirs, inputs with no default, zero durations."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from harness import Project, check_run_files


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_a_hostile_report_file_is_invalid_output_and_the_driver_lives_on(project: Project) -> None:
    # A link to /dev/zero would be read for ever (the driver OOMs); a FIFO would block the
    # event loop (no timeout, no heartbeat, no Ctrl-C). Both must be plain invalid_output.
    project.pipeline({
        "zero": {"command": sh('ln -s /dev/zero "$AGENTCTL_OUTPUT"')},
        "fifo": {"command": sh('mkfifo "$AGENTCTL_OUTPUT"')},
        "nan": {"command": sh('printf \'{"status":"COMPLETE","summary":"x","output":NaN}\' > "$AGENTCTL_OUTPUT"')},
        "fine": {"command": sh("echo fine"), "needs": ["zero", "fifo", "nan"]},
        "other": {"command": sh("echo other")},
    }, defaults={"timeout": "30s"})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stderr
    rows = {t["id"]: t for t in project.status("r1")["tasks"]}
    for tid, words in (("zero", "not a link"), ("fifo", "not a regular file"), ("nan", "NaN")):
        assert rows[tid]["error"]["category"] == "invalid_output", rows[tid]
        assert words in rows[tid]["error"]["message"]
    assert rows["other"]["status"] == "complete"
    assert rows["fine"]["status"] == "skipped"
    check_run_files(project.run_dir("r1"))


def test_secrets_that_json_escapes_are_masked_everywhere(project: Project) -> None:
    secret = 'pa"ss\\wordQQ99'
    key = "sk-test-abcdef1234567890SECRETVALUE"
    project.pipeline({
        "leak": {"command": sh('echo "pw=$DB_PASSWORD" >&2; exit 1')},
        "report": {"command": sh('printf \'{"status":"COMPLETE","summary":"key %s"}\' "$OPENAI_API_KEY" > "$AGENTCTL_OUTPUT"')},
    })
    r = project.cli("run", "p.yaml", "--run-id", "r1",
                    extra_env={"DB_PASSWORD": secret, "OPENAI_API_KEY": key})
    assert r.returncode == 1
    assert "wordQQ99" not in r.stdout + r.stderr and "SECRETVALUE" not in r.stdout + r.stderr
    for dirpath, _dirs, files in os.walk(project.run_dir("r1").path):
        for name in files:
            data = Path(dirpath, name).read_bytes()
            assert b"wordQQ99" not in data and b"SECRETVALUE" not in data, name


def test_usage_errors_are_one_line(project: Project) -> None:
    project.pipeline({"a": {"command": sh("true")}})
    for args, words in ((("run", "p.yaml", "--concurrency", "0"), "--concurrency"),
                        (("reject", "r1", "a"), "--reason"),
                        (("nosuch",), "No such command")):
        r = project.cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentctl: error:") and words in lines[0]


def test_a_state_dir_that_is_a_file_is_one_line_exit_3(project: Project) -> None:
    project.pipeline({"a": {"command": sh("true")}})
    bad = project.root / "afile"
    bad.write_text("x")
    for args in (("run", "p.yaml"), ("status",), ("status", "--json")):
        r = subprocess.run([sys.executable, "-m", "agentctl", *args, "--state-dir", str(bad)],
                           cwd=project.root, env=project.env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 3, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Not a directory" in r.stderr
        assert "internal error" not in r.stderr


def test_an_input_with_no_default_is_required(project: Project) -> None:
    p = project.pipeline({"a": {"command": ["echo", "${{ inputs.x }}"]}})
    p.write_text(p.read_text().replace("name: t\n", "name: t\ninputs:\n  x: {}\n", 1))
    r = project.cli("run", "p.yaml")
    assert r.returncode == 2 and "input 'x' is required" in r.stderr
    assert not (project.state / "runs").exists() or not any((project.state / "runs").iterdir())
    ok = project.cli("run", "p.yaml", "-i", "x=hello", "--run-id", "r1")
    assert ok.returncode == 0, ok.stderr
    assert "hello" in project.status("r1")["tasks"][0]["id"] or project.replay("r1").tasks["a"].report


def test_zero_durations_are_refused(project: Project) -> None:
    p = project.pipeline({"a": {"command": sh("true"), "timeout": "0s", "heartbeat": 0}})
    r = project.cli("validate", str(p))
    assert r.returncode == 2
    assert "tasks.a.timeout: must be more than zero" in r.stderr
    assert "tasks.a.heartbeat: must be more than zero" in r.stderr


def test_starting_a_run_sweeps_only_staging_dirs_left_by_dead_drivers(project: Project) -> None:
    # A driver that is starting has made its hidden staging dir a moment before it locks it:
    # another `run` must not take that for a dead driver's leftovers.
    project.pipeline({"a": {"command": sh("true")}})
    runs = project.state / "runs"
    runs.mkdir(parents=True)
    starting, dead = runs / ".x.aaaaaa.new", runs / ".y.bbbbbb.new"
    for d in (starting, dead):
        (d / "definition").mkdir(parents=True)
    os.utime(dead, (os.stat(dead).st_atime, os.stat(dead).st_mtime - 600))
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stderr
    assert starting.exists() and not dead.exists()
    assert [x["run_id"] for x in project.status()["runs"]] == ["r1"]


def test_a_report_to_a_bare_file_name_is_written_beside_it(project: Project) -> None:
    # write_atomic's temp file goes beside the target: for a bare name, in the current
    # directory, not "/" (a rename from / to another filesystem fails, EXDEV).
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(project.root).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the tests' tmp dir")
    project.pipeline({"a": {"command": sh("true")}})
    assert project.cli("run", "p.yaml", "--run-id", "r1").returncode == 0
    out = Path(tempfile.mkdtemp(dir=shm))
    try:
        r = subprocess.run(project._argv(("report", "r1", "-o", "report.html")), cwd=out,
                           env=project.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert [p.name for p in out.iterdir()] == ["report.html"]
    finally:
        shutil.rmtree(out)
