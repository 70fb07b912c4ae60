"""Status vocabularies and failure categories. Imports nothing heavy: `status` uses it."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CRASHED = "crashed"
    PAUSED = "paused"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    STALE = "stale"
    WAITING_APPROVAL = "waiting_approval"
    NEEDS_REVIEW = "needs_review"
    CANCELLED = "cancelled"


SETTLED = frozenset(
    {TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.BLOCKED, TaskStatus.SKIPPED,
     TaskStatus.CANCELLED}
)


class Effects(StrEnum):
    READ_ONLY = "read-only"
    APPEND_ONLY = "append-only"
    MUTATING = "mutating"
    IRREVERSIBLE = "irreversible"


# Failure categories (status --json "error.category").
CATEGORIES = (
    "timeout", "stale", "crashed", "provider_error", "invalid_output", "blocked", "budget",
    "upstream_failed", "command_failed", "cancelled", "rejected",
)

