"""The plain reporter: a pass's lines in one write, and nothing said lost when the driver stops."""

from __future__ import annotations

import io

from agentctl.lines import LineReporter
from agentctl.state import RunState


class CountingSink(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def _state() -> RunState:
    state = RunState()
    state.run_id = "r1"
    return state


def test_a_pass_is_one_write_and_lines_keep_their_order() -> None:
    out = CountingSink()
    rep = LineReporter(out)
    state = _state()
    for i in range(5):
        rep.event({"type": "task_skipped", "task": f"t{i}", "reason": "because"}, state)
    assert out.getvalue() == ""  # nothing before the pass's records are committed
    rep.tick(state)
    assert out.writes == 1
    assert out.getvalue().splitlines() == [f"skipped  t{i}: because" for i in range(5)]
    rep.tick(state)
    assert out.writes == 1  # nothing new: nothing written


def test_leaving_the_reporter_writes_what_was_said() -> None:
    out = CountingSink()
    with LineReporter(out) as rep:
        rep.event({"type": "task_failed", "task": "a", "category": "timeout", "message": "late\x1b[2J"}, _state())
    assert out.getvalue() == "failed   a [timeout] late\\x1b[2J\n"  # escaped, and not lost
