"""People in the loop: approve, reject, complete (takeover), retry, cancel.

The driver is the single writer of a run's WAL, so a request from another terminal is a
file dropped into ``control/`` (atomically); the driver reads it within a tick, logs the
decision in the WAL (who, when, the note) and answers in ``<request>.done``. When no driver
holds the run, the command takes the lock and writes the WAL itself. Either way the same
``decide`` turns a request into records, so the rules live in one place.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from agentctl import store
from agentctl.errors import LockHeld, UsageError
from agentctl.planning import dependents
from agentctl.reports import validate_report
from agentctl.state import RunState, TaskState

ACTIONS = ("approve", "reject", "complete", "retry", "cancel")
TAKEOVER_FROM = {"pending", "failed", "stale", "blocked", "skipped", "needs_review",
                 "waiting_approval", "cancelled", "running"}


def user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


def _task(state: RunState, tid: str | None) -> TaskState:
    if not tid or tid not in state.tasks:
        known = ", ".join(list(state.tasks)[:10])
        raise UsageError(f"run '{state.run_id}' has no task '{tid}' (tasks: {known})")
    return state.tasks[tid]


def _unskip(state: RunState, tid: str, who: str) -> list[dict[str, Any]]:
    """Tasks skipped because ``tid`` did not complete go back to pending."""
    graph = {t.id: t.needs for t in state.tasks.values()}
    out = []
    for dep in dependents(graph, tid):
        t = state.tasks[dep]
        if t.status == "skipped" and (t.error or {}).get("category") == "upstream_failed":
            out.append({"type": "task_reset", "task": dep, "by": who,
                        "reason": f"'{tid}' was taken over or retried"})
    return out


def _skip_rejected(state: RunState, tid: str, why: str) -> list[dict[str, Any]]:
    """A rejected task's dependents are skipped now, with the person's reason (neither the
    live driver nor a later resume would say why)."""
    graph = {t.id: t.needs for t in state.tasks.values()}
    out = []
    for dep in dependents(graph, tid):
        if state.tasks[dep].status == "pending":
            reason = (f"needs '{tid}', which was {why}" if tid in state.tasks[dep].needs
                      else f"an upstream task ('{tid}') was {why}")
            out.append({"type": "task_skipped", "task": dep, "category": "upstream_failed",
                        "reason": reason})
    return out


def _parent(state: RunState, t: TaskState, who: str) -> list[dict[str, Any]]:
    """A fan-out instance or loop step retried or taken over: its group, if it had settled
    (failed), goes back to pending too, so the scheduler reopens it (and its dependents)."""
    p = state.tasks.get(t.parent) if t.parent else None
    if p is None or not p.settled or p.status == "complete":
        return []
    return [{"type": "task_reset", "task": p.id, "by": who, "reason": f"'{t.id}' was retried"},
            *_unskip(state, p.id, who)]


def decide(state: RunState, req: dict[str, Any], output_schemas: dict[str, Any],
           *, driver_alive: bool, gated: Collection[str] | None = None,
           ) -> tuple[list[dict[str, Any]], str]:
    """A request -> the WAL records that carry it out, and a message for the person.
    ``gated``: the tasks that wait for a person's approval (None: not checked).
    Raises UsageError when the request does not fit the run's state."""
    action = req.get("action")
    who = req.get("user") or user()
    note = req.get("note")
    tid = req.get("task")
    if action == "cancel":
        if not driver_alive and state.status in ("complete", "cancelled"):
            raise UsageError(f"run '{state.run_id}' is {state.status}; there is nothing to cancel")
        return ([{"type": "cancel_requested", "by": who, "reason": note or "cancelled by a person"}],
                f"run {state.run_id}: cancel requested by {who}")
    t = _task(state, tid)
    if action in ("approve", "reject"):
        if gated is not None and t.id not in gated:
            raise UsageError(f"task '{t.id}' needs no approval (it is neither "
                             "`approval: required` nor irreversible)")
        if t.status not in ("waiting_approval", "pending"):
            raise UsageError(f"task '{t.id}' is {t.status}; only a task waiting for approval "
                             "(or not yet reached) can be approved or rejected")
        if action == "approve" and t.approved and t.status == "pending":
            raise UsageError(f"task '{t.id}' is approved already; it runs when its turn comes")
        if action == "approve":
            approval: dict[str, Any] = {"type": "approval", "task": t.id, "decision": "approved",
                                        "by": who}
            if note:
                approval["note"] = note
            return [approval], f"approved '{t.id}'"
        if not note:
            raise UsageError("reject needs --reason")
        return ([{"type": "approval", "task": t.id, "decision": "rejected", "by": who,
                  "note": note}, *_skip_rejected(state, t.id, f"rejected by {who}: {note}")],
                f"rejected '{t.id}': {note}")
    if action == "complete":
        if t.status not in TAKEOVER_FROM:
            raise UsageError(f"task '{t.id}' is {t.status}; a person can complete a pending, "
                             "failed, stale, blocked, skipped or needs_review task")
        if t.status == "running" and driver_alive and not req.get("stale"):
            raise UsageError(f"task '{t.id}' is running and alive; cancel it or wait until it "
                             "is stale")
        report, problems = validate_report(req.get("report"), output_schemas.get(t.id))
        if report is None:
            raise UsageError(f"the report for '{t.id}' does not validate: " + "; ".join(problems))
        if report["status"] != "COMPLETE":
            raise UsageError("a takeover report must have status COMPLETE")
        rec: dict[str, Any] = {"type": "task_taken_over", "task": t.id, "report": report, "by": who}
        if note:
            rec["note"] = note
        return ([rec, *_unskip(state, t.id, who), *_parent(state, t, who)],
                f"'{t.id}' completed by {who}")
    if action == "retry":
        if t.status in ("complete", "running") and not (t.status == "running" and not driver_alive):
            raise UsageError(f"task '{t.id}' is {t.status}; retry takes a task that did not complete")
        return ([{"type": "task_reset", "task": t.id, "by": who, "reason": note or "retry by a person"},
                 *_unskip(state, t.id, who), *_parent(state, t, who)], f"'{t.id}' is queued again")
    raise UsageError(f"unknown action '{action}'")


# --------------------------------------------------------------------------- the wire


def submit(run: store.RunDir, req: dict[str, Any], *, wait_s: float = 10.0,
           lock: store.RunLock | None = None) -> dict[str, Any] | None:
    """Drop a request for the live driver and wait for its answer (None: no answer).

    With ``lock``, also watch for the driver ending (a pause, the run's end, a crash) without
    having read the request: then it is withdrawn and ``{"withdrawn": True}`` is returned
    with ``lock`` held, for the caller to carry the request out itself."""
    store.makedirs(run.control)
    name = f"{time.time_ns():020d}-{secrets.token_hex(3)}.json"
    path = run.control / name
    store.write_json_atomic(path, req)
    done = run.control / (name + ".done")
    deadline = time.monotonic() + wait_s
    next_try = time.monotonic() + 0.25
    while time.monotonic() < deadline:
        if done.exists():
            try:
                answer: dict[str, Any] = json.loads(done.read_text())
            except ValueError:
                time.sleep(0.05)
                continue
            done.unlink(missing_ok=True)
            return answer
        if lock is not None and time.monotonic() >= next_try:
            next_try = time.monotonic() + 0.25
            try:
                lock.acquire()
            except LockHeld:
                pass
            else:
                # A driver answers before it lets go of the lock: no answer yet means that
                # no driver read the request, and none can now.
                if not done.exists():
                    withdraw(path)
                    return {"withdrawn": True}
                lock.release()
                continue
        time.sleep(0.05)
    return None


def pending_requests(run: store.RunDir) -> list[tuple[Path, dict[str, Any] | None]]:
    try:
        names = sorted(n for n in os.listdir(run.control) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out: list[tuple[Path, dict[str, Any] | None]] = []
    for n in names:
        p = run.control / n
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            data = None
        out.append((p, data if isinstance(data, dict) else None))
    return out


def answer(path: Path, ok: bool, message: str) -> None:
    store.write_json_atomic(path.with_name(path.name + ".done"), {"ok": ok, "message": message})
    path.unlink(missing_ok=True)


def withdraw(path: Path) -> None:
    path.unlink(missing_ok=True)
