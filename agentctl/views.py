"""Reading runs for people and programs: ``status`` data, without the lock. No rich here.

``load`` replays the whole WAL (checking every record), and overlays liveness: a run whose
log says running but whose driver is gone is ``crashed``; a running task whose heartbeat is
older than 3 intervals is ``stale``.
"""

from __future__ import annotations

from typing import Any

from agentctl import store
from agentctl.state import RunState, replay

DRIVER_BEAT_S = 1.0


def load(run: store.RunDir) -> RunState:
    # The whole log, checked as resume checks it, rather than run.json plus the records after
    # its offset: damage before that offset must be refused, not hidden behind the snapshot,
    # and a snapshot can claim records the log no longer holds (a cut tail). Reading and
    # replaying 2,000 records takes ~30 ms; the snapshot would save only the replay.
    return replay(store.scan_wal(run.wal).records)


def live_status(run: store.RunDir, state: RunState) -> tuple[str, dict[str, Any]]:
    info, age = run.read_driver()
    alive = store.driver_alive(info, age, DRIVER_BEAT_S)
    driver = {"pid": info.get("pid") if info else None, "alive": alive,
              "heartbeat_age_s": None if age is None else round(age, 1)}
    status = state.status
    if status == "running" and not alive:
        status = "crashed"
    return status, driver


def task_rows(run: store.RunDir, state: RunState, run_alive: bool) -> list[dict[str, Any]]:
    rows = []
    for t in ordered(state):
        hb = run.heartbeat_age(t.id, t.attempt_started_at) if t.status == "running" else None
        status = t.status
        if status == "running" and t.group is None and (not run_alive or (
                t.heartbeat and hb is not None and hb > 3 * t.heartbeat)):
            status = "stale"
        rows.append({
            "id": t.id, "wave": t.wave, "status": status, "attempts": t.attempt,
            "heartbeat_age_s": None if hb is None else round(hb, 1),
            "started_at": t.started_at, "ended_at": t.ended_at,
            "tokens": t.tokens, "cost_usd": round(t.cost_usd, 6), "error": t.error,
        })
        if t.parent is not None:
            rows[-1]["parent"] = t.parent
            if t.iteration is not None:
                rows[-1]["iteration"] = t.iteration
        if t.group is not None:
            rows[-1]["group"] = t.group
            rows[-1]["children"] = len(t.children)
            if t.exit_reason:
                rows[-1]["exit_reason"] = t.exit_reason
    return rows


def ordered(state: RunState) -> list[Any]:
    """Tasks wave by wave, in file order, each group's children right after it."""
    pos = {tid: i for i, tid in enumerate(state.tasks)}

    def key(t: Any) -> tuple[int, int, int]:
        if t.parent is not None and t.parent in state.tasks:
            parent = state.tasks[t.parent]
            return (t.wave, pos[t.parent], 1 + parent.children.index(t.id))
        return (t.wave, pos[t.id], 0)

    return sorted(state.tasks.values(), key=key)


def run_json(run: store.RunDir, state: RunState) -> dict[str, Any]:
    status, driver = live_status(run, state)
    tasks = task_rows(run, state, driver["alive"])
    return {
        "run_id": state.run_id, "pipeline": state.pipeline, "status": status,
        "driver": driver, "tasks": tasks,
        "totals": {"tasks": len(tasks), "complete": state.count("complete"),
                   "tokens": state.tokens, "cost_usd": round(state.cost_usd, 6)},
    }


def runs_json(state_dir: store.StateDir) -> dict[str, Any]:
    out = []
    for run in state_dir.list_runs():
        try:
            state = load(run)
        except Exception as e:  # one broken run must not hide the others
            out.append({"run_id": run.run_id, "pipeline": None, "status": "unreadable",
                        "started_at": None, "tasks": 0, "complete": 0, "cost_usd": 0.0,
                        "error": str(e)})
            continue
        status, _ = live_status(run, state)
        out.append({"run_id": state.run_id, "pipeline": state.pipeline, "status": status,
                    "started_at": state.started_at, "tasks": len(state.tasks),
                    "complete": state.count("complete"), "cost_usd": round(state.cost_usd, 6)})
    return {"runs": out}
