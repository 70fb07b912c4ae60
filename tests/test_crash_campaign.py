"""The crash campaign (DESIGN.md 6.1-6.3): SIGKILL the driver at random moments, resume, again
and again, and check that nothing was lost, redone or torn.

Seeded and reproducible in what it decides (the pipeline, each kill's moment and kind); the
OS decides what the driver had done by then. Run it alone, with its figures printed::

    .venv/bin/python -m pytest tests/test_crash_campaign.py -s
    AGENTCTL_CAMPAIGN_SEED=7 .venv/bin/python -m pytest tests/test_crash_campaign.py -s
    AGENTCTL_CAMPAIGN_KILLS=300 ...   # a longer campaign (default: 60 kills)

Kinds of kill, chosen at random:

- ``driver``: ``os.kill(pid, SIGKILL)``, the driver alone; its agents live on as orphans
  (each leads its own process group) until the next resume stops them;
- ``group``: ``os.killpg(pgid, SIGKILL)``, the driver's whole process group (the CLI runs in
  a session of its own; agents are not in that group, by design, so they live on too);
- ``all``: the driver's group and every agent process of the run, as a power cut would.

Moments: a quarter of the kills land in the first half second of the process (imports, the
lock, the resume prelude: truncating, cleaning, stopping orphans); the rest land 0-0.6 s after
the driver has named itself in heartbeats/driver.json, while it dispatches and commits.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import Driver, Project, check_run_files, wait_for

from agentctl import store
from agentctl.scheduler import idempotency_key
from agentctl.state import replay

SEED = int(os.environ.get("AGENTCTL_CAMPAIGN_SEED", "20261121"))
WAVES, WIDTH = 6, 6  # 36 tasks per run
KILLS_PER_RUN = 15  # at most; a run that finishes sooner ends its share early
MIN_KILLS = int(os.environ.get("AGENTCTL_CAMPAIGN_KILLS", "60"))
MAX_RUNS = 12

pytestmark = pytest.mark.slow


@dataclass
class Kill:
    run_id: str
    driver: int
    kind: str
    early: bool
    at: float  # wall clock, after the driver was reaped
    seq: int  # the WAL's last record then
    complete: frozenset[str]


@dataclass
class Figures:
    kills: list[Kill] = field(default_factory=list)
    resumes: int = 0
    runs: int = 0
    finished_unkilled: int = 0  # drivers that exited before their kill moment
    retried: int = 0  # attempts that failed and were retried by the task's policy
    abandoned: int = 0  # attempts in flight at a kill, ended by the next driver


def build_pipeline(project: Project, rng: random.Random) -> dict[str, str]:
    """WAVES waves of WIDTH tasks; each needs 1-3 of the wave before; about one in seven
    fails its first attempt (retried by its policy). Returns each task's effects."""
    tasks: dict[str, dict[str, Any]] = {}
    effects: dict[str, str] = {}
    for w in range(WAVES):
        for i in range(WIDTH):
            tid = f"w{w}-t{i}"
            effects[tid] = rng.choice(["read-only", "mutating"])
            spec: dict[str, Any] = {"effects": effects[tid]}
            if w:
                spec["needs"] = sorted(rng.sample([f"w{w - 1}-t{j}" for j in range(WIDTH)],
                                                  rng.randint(1, 3)))
            tasks[tid] = spec
            # The side effect comes first, then the sleep: a kill in the sleep leaves an
            # effect done and no report, and the re-run must not do it twice.
            project.behave(tid, effect=effects[tid] == "mutating", effect_first=True,
                           fail_attempts=[1] if rng.random() < 0.15 else [])
    project.config["default"] = {"sleep": [0.02, 0.2]}
    project.pipeline(tasks, name="campaign", limits={"concurrency": 4},
                     defaults={"timeout": "60s", "retries": 2, "backoff": "100ms"})
    return effects


def driver_named(project: Project, run_id: str, pid: int) -> bool:
    try:
        info = json.loads((project.state / "runs" / run_id / "heartbeats" / "driver.json").read_bytes())
    except (OSError, ValueError):
        return False
    return info.get("pid") == pid


def wal_started(project: Project, run_id: str) -> bool:
    try:
        return bool(project.wal(run_id))
    except (store.StateError, OSError):
        return False


def run_agents(project: Project, run_id: str) -> list[int]:
    mark = f"AGENTCTL_RUN_ID={run_id}".encode()
    out = []
    for pid in project.our_processes():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in environ:
            out.append(pid)
    return out


def sleep_until(driver: Driver, moment: float) -> bool:
    """Sleep until ``moment`` (monotonic); False if the driver exited first."""
    while time.monotonic() < moment:
        if driver.poll() is not None:
            return False
        time.sleep(0.005)
    return driver.poll() is None


def kill_at_random(project: Project, run_id: str, driver: Driver, rng: random.Random,
                   first: bool) -> Kill | None:
    early = rng.random() < 0.25
    delay = rng.uniform(0.05, 0.5) if early else rng.uniform(0.0, 0.6)
    kind = rng.choice(["driver", "group", "all"])
    if first:
        # Before run_started is durable there is no run to resume: arm the kill after it.
        wait_for(lambda: wal_started(project, run_id) or driver.poll() is not None,
                 "the run to be logged", timeout=60, every=0.005)
        start = time.monotonic()
    elif early:
        start = time.monotonic()
    else:
        wait_for(lambda: driver_named(project, run_id, driver.pid) or driver.poll() is not None,
                 "the driver to name itself", timeout=60, every=0.005)
        start = time.monotonic()
    if not sleep_until(driver, start + delay):
        return None
    if kind == "driver":
        os.kill(driver.pid, signal.SIGKILL)
    else:
        os.killpg(driver.pid, signal.SIGKILL)
        if kind == "all":
            for pid in run_agents(project, run_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    if driver.wait(timeout=60) != -signal.SIGKILL:
        return None  # it exited on its own just before the signal (a zombie took it)
    at = time.time()
    # The WAL as the dead driver left it: a torn tail is allowed, damage in the middle is not.
    scan = store.scan_wal(project.run_dir(run_id).wal)
    state = replay(scan.records)
    complete = frozenset(t.id for t in state.tasks.values() if t.status == "complete")
    return Kill(run_id, driver.pid, kind, early, at, state.seq, complete)


def campaign_run(project: Project, run_id: str, rng: random.Random, figures: Figures) -> None:
    args: tuple[str, ...] = ("run", "p.yaml", "--run-id", run_id)
    kills = 0
    while True:
        driver = project.spawn(*args)
        if args[0] == "resume":
            figures.resumes += 1
        kill = None
        if kills < KILLS_PER_RUN:
            kill = kill_at_random(project, run_id, driver, rng, first=args[0] == "run")
        if kill is None:
            code = driver.wait(timeout=120)
            assert code == 0, driver.describe()
            if kills < KILLS_PER_RUN:
                figures.finished_unkilled += 1
            return
        kills += 1
        figures.kills.append(kill)
        if len(figures.kills) % 6 == 0:
            # `status` agrees with the log, without the lock, on a crashed run.
            data = project.status(run_id)
            # A kill can land after the driver logged the run's end, just before it exited.
            logged = replay(store.scan_wal(project.run_dir(run_id).wal).records).status
            assert data["status"] == ("crashed" if logged == "running" else logged), data
            assert data["totals"]["complete"] == len(kill.complete)
        args = ("resume", run_id)


def check_run(project: Project, run_id: str, effects: dict[str, str], kills: list[Kill],
              figures: Figures) -> None:
    run = project.run_dir(run_id)
    records = store.scan_wal(run.wal).records
    ends = Counter(r["outcome"] for r in records if r["type"] == "attempt_ended")
    figures.retried += ends["failed"]
    figures.abandoned += ends["abandoned"]
    state = replay(records)
    assert records[-1]["type"] == "run_ended" and records[-1]["status"] == "complete"
    assert {t.id: t.status for t in state.tasks.values()} == dict.fromkeys(effects, "complete")

    execs = [e for e in project.executions() if e["run"] == run_id]
    by_task: dict[str, list[dict[str, Any]]] = {t: [] for t in effects}
    for e in execs:
        by_task[e["task"]].append(e)
    for tid, kind in effects.items():
        key = idempotency_key(run_id, tid)
        t = state.tasks[tid]
        runs = by_task[tid]
        assert runs, f"{tid} never ran"
        assert {e["key"] for e in runs} == {key}  # every attempt had the task's one key
        assert {e["attempt"] for e in runs} <= set(range(1, t.attempt + 1))
        done = sorted(p.name for p in project.effects.iterdir() if p.name.endswith(key))
        if kind == "mutating":
            assert done == [f"{tid}__{key}"], f"{tid}: side effects {done}"
        else:
            assert done == []
        # The committed output is the last attempt's, and output.json is that report.
        assert t.report is not None and t.report["output"]["attempt"] == t.attempt
        assert json.loads((run.task_dir(tid) / "output.json").read_bytes()) == t.report

    for k in kills:
        again = [e for e in execs if e["task"] in k.complete and e["time"] > k.at]
        assert not again, f"complete at the kill of {k.driver} yet ran again: {again}"
        restarted = [r for r in records if r["type"] == "attempt_started"
                     and r["seq"] > k.seq and r["task"] in k.complete]
        assert not restarted, f"complete at the kill of {k.driver} yet restarted: {restarted}"
    check_run_files(run)


def test_crash_campaign(project: Project) -> None:
    rng = random.Random(SEED)
    began = time.monotonic()
    figures = Figures()
    effects = build_pipeline(project, rng)
    assert len(effects) >= 30 and set(effects.values()) == {"read-only", "mutating"}
    while len(figures.kills) < MIN_KILLS:
        assert figures.runs < MAX_RUNS, f"only {len(figures.kills)} kills in {MAX_RUNS} runs"
        run_id = f"c{figures.runs}"
        project.config["seed"] = SEED + figures.runs  # the agents' sleeps
        project.write_config()
        campaign_run(project, run_id, rng, figures)
        figures.runs += 1
        check_run(project, run_id, effects, [k for k in figures.kills if k.run_id == run_id],
                  figures)
    # Nothing of the campaign is left running (a last orphan may be finishing its sleep).
    wait_for(lambda: not project.our_processes(), "every agent to be gone", timeout=30)

    kinds = Counter(k.kind for k in figures.kills)
    print(f"\ncrash campaign: seed {SEED}, {figures.runs} runs of {len(effects)} tasks, "
          f"{len(figures.kills)} kills ({kinds['driver']} driver alone, {kinds['group']} "
          f"process group, {kinds['all']} driver and agents; "
          f"{sum(k.early for k in figures.kills)} in the first half second), "
          f"{figures.resumes} resumes, {figures.finished_unkilled} drivers finished before "
          f"their kill, {len(project.executions())} agent executions ({figures.abandoned} "
          f"abandoned at a kill, {figures.retried} failed and retried), "
          f"{time.monotonic() - began:.1f}s")
