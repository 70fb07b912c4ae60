"""Driving the real ``agentctl`` as a subprocess, for the tests that kill it.

Every driver runs as ``python -m agentctl`` in its own session (start_new_session=True) so a
test can SIGKILL it, or its whole process group. Every process a test starts carries
``AGENTCTL_TEST_ROOT=<its tmp dir>`` in its environment (agents inherit it from the driver),
so the teardown can find and kill whatever is left -- and only that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentctl import store
from agentctl.state import RunState, replay

PY = sys.executable
AGENT = Path(__file__).parent / "agents" / "agent.py"
REPO = Path(__file__).parent.parent


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 60.0,
              every: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy. Generous: never a timing assert."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


class Driver:
    """One ``agentctl`` process (run or resume), with its output in files."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.out_path = out
        self.err_path = err

    def wait(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout=timeout)

    def poll(self) -> int | None:
        return self.proc.poll()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"pid {self.pid} rc {self.proc.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class Project:
    """A workspace: pipelines, the agent's config and logs, and a state dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.exec_log = root / "exec.log"
        self.effects = root / "effects"
        self.scratch = root / "scratch"
        self.logs = root / "logs"
        self.config_path = root / "agent-config.json"
        for d in (self.effects, self.scratch, self.logs):
            d.mkdir()
        self.config: dict[str, Any] = {
            "exec_log": str(self.exec_log), "effects_dir": str(self.effects),
            "scratch": str(self.scratch), "seed": 0, "default": {}, "tasks": {},
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
        self.env.update(AGENTCTL_PLAIN="1", AGENTCTL_TEST_ROOT=str(root))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._n = 0

    # ------------------------------------------------------------------ definitions

    def behave(self, task: str, **behaviour: Any) -> None:
        self.config["tasks"].setdefault(task, {}).update(behaviour)
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    def agent(self, *tag: str) -> list[str]:
        return [PY, str(AGENT), str(self.config_path), *tag]

    def pipeline(self, tasks: dict[str, dict[str, Any]], *, name: str = "t",
                 defaults: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                 path: str = "p.yaml") -> Path:
        """Write a pipeline; a task without ``command`` runs the test agent."""
        body: dict[str, Any] = {"name": name}
        body["defaults"] = {"timeout": "60s", "retries": 0, **(defaults or {})}
        if limits:
            body["limits"] = limits
        body["tasks"] = {tid: {"command": self.agent(), **spec} for tid, spec in tasks.items()}
        self.write_config()
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(body, sort_keys=False))
        return p

    # ------------------------------------------------------------------ the CLI

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        return [PY, "-m", "agentctl", *args, "--state-dir", str(self.state)]

    def cli(self, *args: str, timeout: float = 120.0,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run agentctl to its end. stdout and stderr are kept apart."""
        return subprocess.run(self._argv(args), cwd=self.root, env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)

    def status(self, run_id: str | None = None) -> dict[str, Any]:
        args = ("status", run_id, "--json") if run_id else ("status", "--json")
        r = self.cli(*args, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def spawn(self, *args: str) -> Driver:
        """Start agentctl in its own session and return at once."""
        self._n += 1
        out, err = self.logs / f"{self._n}.out", self.logs / f"{self._n}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(self._argv(args), cwd=self.root, env=self.env, stdout=fo,
                                    stderr=fe, stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(proc)
        return Driver(proc, out, err)

    # ------------------------------------------------------------------ reading the run

    def run_dir(self, run_id: str) -> store.RunDir:
        return store.StateDir(self.state).run(run_id)

    def wal(self, run_id: str) -> list[dict[str, Any]]:
        return store.scan_wal(self.run_dir(run_id).wal).records

    def replay(self, run_id: str) -> RunState:
        return replay(self.wal(run_id))

    def executions(self, task: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.exec_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        rows = [json.loads(line) for line in lines]
        return [r for r in rows if task is None or r["task"] == task]

    def effects_of(self, task: str) -> list[str]:
        return sorted(p.name for p in self.effects.iterdir() if p.name.startswith(task + "__"))

    def running(self, run_id: str, task: str) -> bool:
        """The task's attempt is durably started and its agent has begun executing."""
        try:
            st = self.replay(run_id)
        except (store.StateError, KeyError):
            return False
        t = st.tasks.get(task)
        return bool(t and t.status == "running"
                    and any(e["attempt"] == t.attempt for e in self.executions(task)))

    # ------------------------------------------------------------------ cleaning up

    def our_processes(self) -> list[int]:
        """Pids of live processes started for this project (drivers, agents, children)."""
        mark = f"AGENTCTL_TEST_ROOT={self.root}".encode()
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mark in env and not gone(int(entry)):
                out.append(int(entry))
        return out

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in self.our_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    try:
        yield p
    finally:
        p.close()


def check_run_files(run: store.RunDir) -> None:
    """Every file of a run parses, and no temp file is left."""
    scan = store.scan_wal(run.wal)
    assert scan.torn_bytes == 0, f"{run.wal}: {scan.torn_bytes} torn bytes at the end"
    lines = run.wal.read_bytes().splitlines(keepends=True)
    assert len(lines) == len(scan.records)
    for i, line in enumerate(lines, 1):
        rec = store.decode_record(line)
        assert rec is not None and rec["seq"] == i, f"{run.wal}:{i}: bad record {line[:80]!r}"
    leftovers = []
    for path in store.iter_files(run.path):
        if path.name.endswith(".tmp"):
            leftovers.append(path)
        elif path.suffix == ".json":
            json.loads(path.read_bytes())  # raises on a torn file
        elif path.name == "pid":
            assert path.read_text().strip().isdigit(), f"{path}: {path.read_text()!r}"
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_bytes())
    assert not leftovers, f"temp files left: {leftovers}"
