"""Tables and live views for people. Agent output and paths are untrusted text: they go
into ``rich.text.Text`` cells, never into markup."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agentctl.lines import LineReporter, _printable  # noqa: F401 (re-exported)
from agentctl.planning import waves

if TYPE_CHECKING:
    from agentctl.definitions import Definition
    from agentctl.state import RunState

STYLE = {
    "complete": "green", "running": "cyan", "pending": "dim", "failed": "red",
    "blocked": "red", "skipped": "yellow", "stale": "magenta", "crashed": "red",
    "waiting_approval": "yellow", "needs_review": "yellow", "cancelled": "yellow",
    "paused": "yellow", "interrupted": "yellow", "budget_exceeded": "red",
}


def _s(status: str) -> Text:
    return Text(status, style=STYLE.get(status, ""))


def _t(value: Any) -> Text:
    return Text("" if value is None else str(value))


def waves_table(defn: Definition) -> Table:
    table = Table(title=Text(f"{defn.pipeline.name}: {len(defn.pipeline.tasks)} tasks"))
    for col in ("wave", "task", "runner", "skill / command", "needs", "effects"):
        table.add_column(col)
    graph = {t: s.needs for t, s in defn.pipeline.tasks.items()}
    for i, wave in enumerate(waves(graph)):
        for tid in wave:
            spec = defn.pipeline.tasks[tid]
            what = spec.skill or ""
            if spec.command:
                cmd = " ".join(spec.command)
                what = f"{what}: {cmd}" if what else cmd
            approval = " (approval)" if defn.needs_approval(tid) else ""
            table.add_row(str(i), _t(tid), defn.runner_of(tid), _t(what[:60]),
                          _t(", ".join(spec.needs)), defn.effects_of(tid).value + approval)
    return table


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _elapsed(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else datetime.now(UTC)
    except ValueError:
        return ""
    return _age((b - a).total_seconds())


def runs_table(data: dict[str, Any]) -> Table:
    table = Table(title="runs")
    for col in ("run", "pipeline", "status", "started", "done", "cost $"):
        table.add_column(col)
    for r in data["runs"]:
        table.add_row(_t(r["run_id"]), _t(r["pipeline"]), _s(r["status"]),
                      _t((r["started_at"] or "")[:19].replace("T", " ")),
                      f"{r['complete']}/{r['tasks']}", f"{r['cost_usd']:.4f}")
    return table


def run_table(data: dict[str, Any]) -> Group:
    d = data["driver"]
    head = Text()
    head.append(f"run {data['run_id']}", style="bold")
    head.append(f"  pipeline {data['pipeline']}  status ")
    head.append_text(_s(data["status"]))
    if d["pid"] is not None:
        head.append(f"  driver pid {d['pid']} ({'alive' if d['alive'] else 'gone'}"
                    + (f", beat {_age(d['heartbeat_age_s'])} ago" if d["heartbeat_age_s"] is not None else "")
                    + ")")
    table = Table()
    width = min(40, max([len(t["id"]) for t in data["tasks"]] + [4]))
    for col in ("wave", "task", "status", "att", "beat", "elapsed", "tokens", "cost $", "note"):
        if col == "task":
            table.add_column(col, min_width=width, no_wrap=True)
        elif col == "status":
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col)
    last_wave = None
    for t in data["tasks"]:
        wave = str(t["wave"]) if t["wave"] != last_wave else ""
        if t["wave"] != last_wave and last_wave is not None:
            table.add_section()
        last_wave = t["wave"]
        err = t["error"]
        note = f"{err['category']}: {err['message']}"[:80] if err else ""
        if t.get("group"):
            note = (f"{t['children']} {'instances' if t['group'] == 'foreach' else 'tasks'}"
                    + (f", {t['exit_reason']}" if t.get("exit_reason") else "")
                    + (f"; {note}" if note else ""))
        table.add_row(wave, _t(t["id"]), _s(t["status"]), str(t["attempts"]),
                      _age(t["heartbeat_age_s"]), _elapsed(t["started_at"], t["ended_at"]),
                      str(t["tokens"] or ""), f"{t['cost_usd']:.4f}" if t["cost_usd"] else "",
                      _t(note))
    tot = data["totals"]
    foot = Text(f"{tot['complete']}/{tot['tasks']} complete · {tot['tokens']} tokens · "
                f"${tot['cost_usd']:.4f}")
    parts: list[Any] = [head, table, foot]
    if data["status"] == "crashed":
        parts.append(Text(f"the driver is gone: continue with `agentctl resume {data['run_id']}`",
                          style="yellow"))
    return Group(*parts)


# --------------------------------------------------------------------------- live progress


def _state_rows(state: RunState, beat_age: Any = None) -> dict[str, Any]:
    tasks = []
    for t in state.tasks.values():
        age = None
        if beat_age is not None and t.status == "running" and t.group is None:
            age = beat_age(t.id, t.attempt_started_at)
        tasks.append({"id": t.id, "wave": t.wave, "status": t.status, "attempts": t.attempt,
                      "heartbeat_age_s": age, "started_at": t.started_at, "ended_at": t.ended_at,
                      "tokens": t.tokens, "cost_usd": t.cost_usd, "error": t.error,
                      "group": t.group, "children": len(t.children), "exit_reason": t.exit_reason})
    order = {t.id: t.wave for t in state.tasks.values()}
    tasks.sort(key=lambda r: order[str(r["id"])])
    return {"run_id": state.run_id, "pipeline": state.pipeline, "status": state.status,
            "driver": {"pid": None, "alive": True, "heartbeat_age_s": None}, "tasks": tasks,
            "totals": {"tasks": len(tasks), "complete": state.count("complete"),
                       "tokens": state.tokens, "cost_usd": state.cost_usd}}


class LiveReporter:
    """A rich live table, for a terminal."""

    def __init__(self, console: Console, state_dir: Any = None) -> None:
        self.console = console
        self.state_dir = state_dir
        self.live: Live | None = None
        self._last = 0.0
        self._state: RunState | None = None

    def __enter__(self) -> LiveReporter:
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            if self._state is not None:
                self._last = 0.0
                self.tick(self._state)  # the final state, not the last throttled frame
            self.live.__exit__(None, None, None)

    def event(self, rec: dict[str, Any], state: RunState) -> None:
        self.tick(state)

    def tick(self, state: RunState) -> None:
        self._state = state
        now = time.monotonic()
        if self.live is None or now - self._last < 0.2:
            return
        self._last = now
        beat_age = None
        if self.state_dir is not None and state.run_id:
            from agentctl.store import RunDir

            beat_age = RunDir(self.state_dir.runs / state.run_id).heartbeat_age
        rows = _state_rows(state, beat_age)
        if len(rows["tasks"]) > 40:  # keep the screen usable: running and recent only
            rows["tasks"] = [t for t in rows["tasks"] if t["status"] not in ("pending", "complete")][:40]
        self.live.update(run_table(rows))


