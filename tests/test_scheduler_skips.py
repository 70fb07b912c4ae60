"""The scheduler's skips of dependents equal the plain definition (every pending task below a
failed one, in file order, skipped once with the first failure's reason), although it keeps
its reverse graph between calls and does not walk again what a call in the same batch walked."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from agentctl.planning import dependents
from agentctl.scheduler import Scheduler
from agentctl.state import RunState, TaskState
from agentctl.store import Journal, RunDir

HOW = {"failed": "failed", "blocked": "is blocked", "skipped": "was skipped",
       "cancelled": "was cancelled"}


def reference(state: RunState, batch: list[dict[str, Any]], failed: str) -> None:
    staged = {r["task"] for r in batch if r["type"] == "task_skipped"}
    how = HOW[state.tasks[failed].status]
    graph = {t.id: t.needs for t in state.tasks.values()}
    for dep in dependents(graph, failed):
        t = state.tasks[dep]
        if t.status == "pending" and dep not in staged:
            reason = (f"needs '{failed}', which {how}" if failed in t.needs
                      else f"an upstream task ('{failed}') {how}")
            batch.append({"type": "task_skipped", "task": dep, "reason": reason,
                          "category": "upstream_failed"})
            staged.add(dep)


def random_run(rng: random.Random) -> RunState:
    n = rng.randint(2, 40)
    ids = [f"t{i}" for i in range(n)]
    rng.shuffle(ids)  # file order is not the order of the graph
    state = RunState()
    for tid in ids:
        k = int(tid[1:])
        state.tasks[tid] = TaskState(
            id=tid, wave=0, needs=[f"t{j}" for j in range(k) if rng.random() < 0.2],
            effects="read-only", runner="noop",
            status=rng.choice(["pending"] * 4 + ["running", "complete", "failed", "skipped"]))
    return state


def play(seed: int, use_scheduler: bool, tmp: Path) -> list[dict[str, Any]]:
    """Failures one after another, with a commit now and then (skips applied, new batch).
    The scheduler applies each skip as it stages it; the reference at the commit."""
    rng = random.Random(seed)
    state = random_run(rng)
    journal = Journal(RunDir(tmp), next_seq=1)  # staged records only: never flushed
    sched = Scheduler(None, journal, None, state, None)  # type: ignore[arg-type]
    batch: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 8)):
        tid = rng.choice(list(state.tasks))
        ending = rng.choice(["failed", "blocked", "cancelled"])
        saved = state.tasks[tid].status
        state.tasks[tid].status = ending  # as _staged_final does
        if use_scheduler:
            sched._skip_dependents(tid)
        else:
            reference(state, batch, tid)
        state.tasks[tid].status = saved
        if rng.random() < 0.25:
            staged, batch = (sched._batch, batch) if use_scheduler else (batch, [])
            if use_scheduler:
                sched._batch = []  # what commit() does: a new list
            for rec in staged:
                state.tasks[rec["task"]].status = "skipped"
            for t in rng.sample(list(state.tasks.values()), 2):  # retries, resets, endings
                t.status = rng.choice(["pending", "running", "complete", "failed"])
            log += staged
    journal.close()
    out = log + (sched._batch if use_scheduler else batch)
    return [{k: v for k, v in r.items() if k not in ("seq", "at")} for r in out]


@pytest.mark.parametrize("seed", range(400))
def test_skips_equal_the_plain_definition(seed: int, tmp_path: Path) -> None:
    assert play(seed, True, tmp_path) == play(seed, False, tmp_path)
