"""The command runner starts agents with posix_spawn where it can, and with subprocess.Popen
where it cannot (a task's own `workdir`): both must give an agent the same world. Real
agents, real processes, through the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import stat
import subprocess
import threading
from pathlib import Path

from harness import Project

from agentctl.models import StepSpec
from agentctl.runners.base import Attempt
from agentctl.runners.command import CommandRunner


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def summaries(project: Project, run_id: str) -> dict[str, str]:
    return {r["task"]: r["report"]["summary"] for r in project.wal(run_id)
            if r["type"] == "attempt_ended" and r["outcome"] == "complete"}


def errors(project: Project, run_id: str) -> dict[str, str]:
    return {t["id"]: t["error"]["message"] for t in project.status(run_id)["tasks"] if t["error"]}


def test_an_agent_runs_in_the_workspace_or_in_its_tasks_workdir(project: Project) -> None:
    (project.root / "sub").mkdir()
    project.pipeline({"here": {"command": ["pwd"]},  # posix_spawn
                      "there": {"command": ["pwd"], "workdir": "sub"}})  # Popen: a directory change
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stderr
    got = summaries(project, "r1")
    assert Path(got["here"]).resolve() == project.root.resolve()
    assert Path(got["there"]).resolve() == (project.root / "sub").resolve()


def test_a_missing_command_or_workdir_fails_the_task_with_its_name(project: Project) -> None:
    project.pipeline({"nosuch": {"command": ["agentctl-no-such-program-xyz"]},
                      "nodir": {"command": ["pwd"], "workdir": "missing"},
                      "noexec": {"command": ["./plain.txt"]}})
    (project.root / "plain.txt").write_text("not a program\n")
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 1, r.stderr
    got = errors(project, "r1")
    assert got["nosuch"] == "command not found: agentctl-no-such-program-xyz"
    assert got["nodir"].startswith("workdir ") and got["nodir"].endswith("missing does not exist")
    assert got["noexec"] == "permission denied: ./plain.txt"


def test_the_program_is_found_on_the_tasks_own_path(project: Project) -> None:
    # PATH is searched in the agent's environment (as exec and Popen do), not the driver's.
    bin_dir = project.root / "mybin"
    bin_dir.mkdir()
    tool = bin_dir / "mytool"
    tool.write_text("#!/bin/sh\necho mytool ran with $1\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    shadow = project.root / "shadow"  # earlier on PATH, not executable: skipped, as exec does
    shadow.mkdir()
    (shadow / "mytool").write_text("#!/bin/sh\necho wrong one\n")
    path = f"{shadow}:{bin_dir}:{os.environ['PATH']}"
    project.pipeline({"t": {"command": ["mytool", "x"], "env": {"PATH": path}}})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stderr
    assert summaries(project, "r1")["t"] == "mytool ran with x"


def test_an_agent_gets_the_prompt_on_stdin_and_sigpipe_at_its_default(project: Project) -> None:
    skill = project.root / "skills" / "echoer"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text("---\nname: echoer\ndescription: Echoes.\n---\nSay the magic word.\n")
    # Python ignores SIGPIPE; an agent must not inherit that (a `cmd | head` would never end).
    # /proc/self/status's SigIgn is the mask of ignored signals; SIGPIPE is signal 13.
    project.pipeline({
        "prompt": {"skill": "echoer", "command": sh("head -c 200 | tr '\\n' ' '")},
        "sigs": {"command": sh("grep SigIgn /proc/self/status")},
    })
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stderr
    got = summaries(project, "r1")
    assert "Say the magic word." in got["prompt"]
    ignored = int(got["sigs"].split()[-1], 16)
    assert not ignored & (1 << (13 - 1)), got["sigs"]


def test_an_agent_gets_no_descriptor_the_driver_inherited(project: Project) -> None:
    # Popen closes every descriptor past 2 in the child; posix_spawn does not, so the driver
    # makes the ones it inherited close-on-exec. A leaked write end of a pipe would keep
    # whoever reads it (a CI log, a shell's $(...)) waiting for as long as an agent lives.
    project.pipeline({"fds": {"command": sh("ls /proc/self/fd | tr '\\n' ' '")}})
    r, w = os.pipe()
    os.dup2(w, 77)  # inheritable, as a parent process might hand one down
    try:
        done = subprocess.run(
            [*project._argv(("run", "p.yaml", "--run-id", "r1"))], cwd=project.root,
            env=project.env, pass_fds=(77,), capture_output=True, text=True, timeout=120)
    finally:
        os.close(77)
        os.close(w)
        os.close(r)
    assert done.returncode == 0, done.stderr
    fds = {int(x) for x in summaries(project, "r1")["fds"].split()}
    assert 77 not in fds
    assert fds <= {0, 1, 2, 3}  # 3: ls's own handle on /proc/self/fd


def _attempt(argv: list[str], tmp: Path, n: int) -> Attempt:
    d = tmp / f"a{n}"
    d.mkdir(parents=True)
    return Attempt(run_id="r", task_id="t", attempt=1, idempotency_key="k",
                   spec=StepSpec.model_validate({"command": argv}), skill=None, model=None,
                   models=[], workspace=Path.cwd(), workdir=Path.cwd(), task_dir=d,
                   input_path=d / "input.json", output_path=d / "report.json", prompt_path=None,
                   heartbeat_path=d / "beat", packet={}, prompt=None, argv=argv,
                   env=dict(os.environ), beat=lambda: None)


def test_no_descriptor_another_thread_opens_reaches_an_agent(tmp_path: Path) -> None:
    # OpenSSL opens its CA bundle without close-on-exec (litellm's import thread does this
    # while the first agents start): Popen's close_fds hides that, posix_spawn would not.
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            ssl.create_default_context()

    async def main() -> list[str]:
        runner, seen = CommandRunner(), []
        for i in range(60):
            out = await runner.run(_attempt(["ls", "-l", "/proc/self/fd"], tmp_path, i))
            assert out.report is not None, out.message
            seen += [line for line in out.report["summary"].splitlines()[1:]
                     if not re.search(r" [0-3] -> ", line)]  # 3: ls's own handle on the dir
        return seen

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        seen = asyncio.run(main())
    finally:
        stop.set()
        thread.join()
    assert seen == [], f"{len(seen)} leaked, e.g. {seen[:2]}"


def test_a_workspace_made_again_by_a_task_still_runs_the_next_task(project: Project) -> None:
    # The driver's directory is deleted and made again: its cwd is gone, Popen's chdir is not.
    ws = project.root / "ws"
    ws.mkdir()
    project.pipeline({
        "fresh": {"command": sh("cd .. && rm -rf ws && mkdir ws"), "effects": "mutating"},
        "build": {"needs": "fresh", "command": ["pwd"], "effects": "read-only"}})
    r = subprocess.run(project._argv(("run", str(project.root / "p.yaml"), "--run-id", "r1")),
                       cwd=ws, env=project.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(summaries(project, "r1")["build"]).resolve() == ws.resolve()


def test_a_program_put_earlier_on_path_by_a_task_is_the_one_run(project: Project) -> None:
    early, late = project.root / "early", project.root / "late"
    early.mkdir()
    late.mkdir()
    (late / "tool").write_text("#!/bin/sh\necho system tool\n")
    (late / "tool").chmod(0o755)
    install = f'printf "#!/bin/sh\\necho project wrapper\\n" > {early}/tool && chmod +x {early}/tool'
    project.pipeline({
        "probe": {"command": ["tool"], "effects": "read-only"},
        "install": {"needs": "probe", "command": sh(install), "effects": "mutating"},
        "use": {"needs": "install", "command": ["tool"], "effects": "read-only"}},
        defaults={"env": {"PATH": f"{early}:{late}:/usr/bin:/bin"}})
    r = project.cli("run", "p.yaml", "--run-id", "r1")
    assert r.returncode == 0, r.stderr
    got = summaries(project, "r1")
    assert (got["probe"], got["use"]) == ("system tool", "project wrapper")
