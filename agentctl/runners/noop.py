"""An in-process runner that completes at once: for tests and the engine's benchmark."""

from __future__ import annotations

from agentctl.runners.base import Attempt, Outcome


class NoopRunner:
    uses_files = False  # no task directory: no packet, heartbeat or output.json file (the WAL has all)
    async def run(self, attempt: Attempt) -> Outcome:
        return Outcome(report={"status": "COMPLETE", "summary": f"{attempt.task_id}: no-op"})
