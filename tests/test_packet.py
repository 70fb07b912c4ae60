"""input.json is the packet, whatever the encoding shortcut: tasks that need the same tasks
share their needs' JSON only while those reports are the very same objects."""

from __future__ import annotations

import json
from typing import Any

from agentctl.scheduler import Scheduler


def encoder() -> Scheduler:
    s = Scheduler.__new__(Scheduler)  # only the packet cache is used
    s._needs_json = {}
    return s


def packet(task: str, needs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"run_id": "r", "task": task, "attempt": 1, "with": {"q": "é \"quoted\""},
            "needs": needs, **extra}


def test_the_text_is_the_packet_and_follows_reports_that_change() -> None:
    s = encoder()
    first = {"status": "COMPLETE", "summary": "one", "output": {"n": [1, 2.5, None]}}
    needs = {"a": first, "b": {"status": "COMPLETE", "summary": "two"}}
    for task in ("x", "y"):  # the second is served from the cache
        pkt = packet(task, dict(needs), item={"k": "v"}, index=3)
        assert json.loads(s._packet_json(pkt)) == pkt
    # `a` ran again: a new report object under the same name must not be served stale.
    needs["a"] = {"status": "COMPLETE", "summary": "one, again"}
    pkt = packet("z", dict(needs))
    assert json.loads(s._packet_json(pkt))["needs"]["a"]["summary"] == "one, again"
    # (The state never changes a report in place: apply() puts the new one in its place.)
    assert json.loads(s._packet_json(packet("w", {})))["needs"] == {}
