"""Plain log lines for pipes and CI logs: the driver's reporter when stdout is not a
terminal. No rich here, so a plain run does not import it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from agentctl.state import RunState

_CONTROL = {c: " " if c in (9, 10, 13) else f"\\x{c:02x}" for c in [*range(32), 127]}
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def _printable(text: str) -> str:
    """Agent text on one line, its control characters and bidi overrides shown as escapes,
    so an agent cannot move the cursor or recolour the terminal."""
    return text.translate(_CONTROL)


class LineReporter:
    """Plain log lines, for pipes and CI logs."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self._lines: list[str] = []  # written once a pass (``tick``): one write, not one a line

    def __enter__(self) -> LineReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tick(None)  # whatever the driver said before it stopped, however it stopped

    def event(self, rec: dict[str, Any], state: RunState) -> None:
        kind = rec["type"]
        line = None
        if kind == "attempt_started":
            t = state.tasks[rec["task"]]
            model = f" model={rec['model']}" if rec.get("model") else ""
            line = f"start    wave {t.wave} {rec['task']} attempt {rec['attempt']}{model}"
        elif kind == "attempt_ended":
            outcome = rec["outcome"]
            extra = ""
            if rec.get("category"):
                extra = f" [{rec['category']}] {rec.get('message') or ''}"
            if outcome != "complete" and rec.get("retry"):
                extra += " (will retry)"
            cost = f" tokens={rec['tokens']}" if rec.get("tokens") else ""
            line = f"{outcome:<8} {rec['task']} attempt {rec['attempt']} in {rec.get('duration_s', 0):.2f}s{cost}{extra}"
        elif kind == "task_skipped":
            line = f"skipped  {rec['task']}: {rec.get('reason')}"
        elif kind == "task_needs_review":
            line = f"review   {rec['task']}: {rec.get('reason')}"
        elif kind == "task_failed":
            line = f"failed   {rec['task']} [{rec.get('category')}] {rec.get('message') or ''}"
        elif kind == "tasks_expanded":
            ids = [i["id"] for i in rec["instances"]]
            shown = ", ".join(ids[:3]) + (f", ... {ids[-1]}" if len(ids) > 3 else "")
            line = f"expand   {rec['task']} into {len(ids)} instance(s): {shown}"
        elif kind == "loop_iteration":
            line = (f"iterate  {rec['task']} iteration {rec['iteration']}: "
                    f"{rec['maker']['id']} then {rec['checker']['id']}")
        elif kind == "group_ended":
            t = state.tasks[rec["task"]]
            why = f" ({rec['exit_reason']})" if rec.get("exit_reason") else ""
            what = (f"after {t.iteration} iteration(s)" if t.group == "loop"
                    else f"{len(t.children)} instance(s)")
            extra = f" [{rec['category']}] {rec.get('message') or ''}" if rec.get("category") else ""
            line = f"{rec['status']:<8} {rec['task']} {what}{why}{extra}"
        elif kind == "run_ended":
            line = (f"run {state.run_id} {rec['status']}: {state.count('complete')}/"
                    f"{len(state.tasks)} complete, {state.tokens} tokens, ${state.cost_usd:.4f}")
        if line:
            self._lines.append(_printable(line) + "\n")

    def tick(self, state: RunState | None) -> None:
        # Once a pass, after its records are committed: one write and one flush, not one of
        # each per line (stdout is unbuffered under PYTHONUNBUFFERED).
        if self._lines:
            text, self._lines = "".join(self._lines), []
            self.out.write(text)
        self.out.flush()
