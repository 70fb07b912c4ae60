"""Pure: the facts in the WAL -> the state of a run. No I/O.

Every record is a dict with ``type``; ``apply`` folds one into a RunState. The scheduler
decides (retry or not, skip or not) and writes its decision as a record, so replay never has
to re-decide anything: replaying the same log always gives the same state.

Record types::

    run_started      run_id pipeline workspace inputs tasks[] options definition_sha
    driver_started   pid host mode
    attempt_started  task attempt key [model]
    attempt_ended    task attempt outcome category message report tokens cost_usd
                     retry counts duration_s
    llm_call         task attempt call request_hash response tokens cost_usd model latency_s
    task_skipped     task reason
    task_needs_review task reason
    task_waiting_approval task
    approval         task decision(approved|rejected) by [note]
    task_taken_over  task report by [note]          (a person supplied the report)
    task_reset       task by reason                 (retry by a person, --retry-failed)
    task_cancelled   task reason
    cancel_requested by reason
    run_options      options                        (e.g. a raised budget on resume)
    task_failed      task category message         (failed before any attempt)
    tasks_expanded   task instances[{id index item}] (fan-out: logged before any starts)
    loop_iteration   task iteration maker{id runner effects skill} checker{...}
    group_ended      task status [report category message exit_reason]
    group_reopened   task                           (a retried group runs its children again)
    run_ended        status [reason]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentctl.vocab import SETTLED, TaskStatus


@dataclass
class Attempt:
    n: int
    key: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    outcome: str | None = None  # complete, blocked, failed, abandoned
    category: str | None = None
    message: str | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    duration_s: float | None = None
    model: str | None = None


@dataclass
class TaskState:
    id: str
    wave: int
    needs: list[str]
    effects: str
    runner: str
    skill: str | None = None
    heartbeat: float | None = None
    status: str = TaskStatus.PENDING.value
    attempts: list[Attempt] = field(default_factory=list)
    failures: int = 0  # attempts that count against the retry policy
    report: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    reason: str | None = None  # why skipped / needs review
    started_at: str | None = None
    ended_at: str | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # request_hash -> response
    approved: bool = False
    # Fan-out and review loops: a group task has children; a child names its parent.
    parent: str | None = None
    role: str | None = None  # instance, maker, checker
    index: int | None = None
    item: Any = None
    iteration: int | None = None
    group: str | None = None  # foreach, loop
    children: list[str] = field(default_factory=list)
    exit_reason: str | None = None  # loops: passed, max_iterations, budget, no_progress, failed

    @property
    def attempt(self) -> int:
        return len(self.attempts)

    @property
    def attempt_started_at(self) -> str | None:
        """When the latest attempt started (what a missing heartbeat file counts from)."""
        return self.attempts[-1].started_at if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        """For run.json: the paid responses (``calls``) stay in the WAL, where a resume
        reads them; here they would double the size of an llm run's snapshot. Their count
        is kept."""
        d = dict(self.__dict__)
        d["attempts"] = [dict(a.__dict__) for a in self.attempts]
        d["calls"] = len(self.calls)
        return d

    @property
    def settled(self) -> bool:
        # SETTLED holds StrEnum members, equal to their values: no enum lookup per call
        # (the scheduler asks this of every task on every pass).
        return self.status in SETTLED


@dataclass
class RunState:
    run_id: str = ""
    pipeline: str = ""
    status: str = "running"
    reason: str | None = None
    workspace: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    definition_sha: str = ""
    started_at: str | None = None
    ended_at: str | None = None
    driver_pid: int | None = None
    drivers: int = 0
    tasks: dict[str, TaskState] = field(default_factory=dict)
    seq: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cancel_requested: bool = False

    # ------------------------------------------------------------------ views

    def waves(self) -> list[list[TaskState]]:
        out: list[list[TaskState]] = []
        for t in self.tasks.values():
            while len(out) <= t.wave:
                out.append([])
            out[t.wave].append(t)
        return out

    def count(self, status: str) -> int:
        return sum(1 for t in self.tasks.values() if t.status == status)

    def in_flight(self) -> list[TaskState]:
        # A group (fan-out, loop) is "running" while its children run; it has no attempt.
        return [t for t in self.tasks.values()
                if t.status == TaskStatus.RUNNING.value and t.group is None]

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """The state as plain data, for run.json. A shallow view to be serialised at once:
        reports, inputs and options are the state's own objects, not copies (a deep copy of
        a 1,000-task state took 0.1 s; this takes a few ms)."""
        d = dict(self.__dict__)
        d["tasks"] = {tid: t.to_dict() for tid, t in self.tasks.items()}
        return d


def apply(state: RunState, rec: dict[str, Any]) -> None:
    kind = rec["type"]
    state.seq = rec.get("seq", state.seq)
    at = rec.get("at")
    if kind == "run_started":
        state.run_id = rec["run_id"]
        state.pipeline = rec["pipeline"]
        state.workspace = rec.get("workspace", "")
        state.inputs = rec.get("inputs", {})
        state.options = rec.get("options", {})
        state.definition_sha = rec.get("definition_sha", "")
        state.started_at = at
        for t in rec["tasks"]:
            state.tasks[t["id"]] = TaskState(
                id=t["id"], wave=t["wave"], needs=list(t["needs"]), effects=t["effects"],
                runner=t["runner"], skill=t.get("skill"), heartbeat=t.get("heartbeat"),
            )
        return
    if kind == "driver_started":
        state.driver_pid = rec["pid"]
        state.drivers += 1
        state.status = "running"
        state.reason = None
        state.ended_at = None
        return
    if kind == "run_ended":
        state.status = rec["status"]
        state.reason = rec.get("reason")
        state.ended_at = at
        return
    if kind == "run_options":
        state.options.update(rec.get("options", {}))
        return
    if kind == "cancel_requested":
        state.cancel_requested = True
        return

    task = state.tasks.get(rec.get("task", ""))
    if task is None:
        return  # a record type from a newer agentctl, or about no task: nothing to fold
    if kind == "attempt_started":
        task.attempts.append(Attempt(n=rec["attempt"], key=rec.get("key", ""), started_at=at,
                                     model=rec.get("model")))
        task.status = TaskStatus.RUNNING.value
        task.error = None
        task.reason = None
        if task.started_at is None:
            task.started_at = at
        task.ended_at = None
    elif kind == "attempt_ended":
        att = task.attempts[rec["attempt"] - 1]
        if rec.get("superseded"):
            # A person took the task over while this attempt ran: the attempt ends, the
            # task keeps the person's decision.
            att.ended_at = at
            att.outcome = rec["outcome"]
            att.category = rec.get("category")
            att.message = rec.get("message")
            return
        att.ended_at = at
        att.outcome = rec["outcome"]
        att.category = rec.get("category")
        att.message = rec.get("message")
        # Model calls already added their usage to the attempt (llm_call); this adds the rest.
        extra_tokens, extra_cost = int(rec.get("tokens", 0)), float(rec.get("cost_usd", 0.0))
        att.tokens += extra_tokens
        att.cost_usd += extra_cost
        if rec.get("category") == "invalid_output":
            # Paid replies are reused by the next attempt (no paying twice) unless they are
            # what failed: replaying known-bad replies would fail the same way for free.
            task.calls.clear()
        att.duration_s = rec.get("duration_s")
        task.tokens += extra_tokens
        task.cost_usd += extra_cost
        state.tokens += extra_tokens
        state.cost_usd += extra_cost
        if rec.get("counts", True) and rec["outcome"] != "complete":
            task.failures += 1
        if rec["outcome"] == "complete":
            task.status = TaskStatus.COMPLETE.value
            task.report = rec.get("report")
            task.error = None
            task.ended_at = at
        elif rec.get("retry"):
            task.status = TaskStatus.PENDING.value
            task.error = _error(rec)
        else:
            task.status = (TaskStatus.BLOCKED if rec["outcome"] == "blocked"
                           else TaskStatus.FAILED).value
            task.report = rec.get("report")
            task.error = _error(rec)
            task.ended_at = at
    elif kind == "llm_call":
        # Tokens are counted here, as each call is paid for; attempt_ended then carries
        # only what was not already logged by calls.
        task.calls[rec["request_hash"]] = rec["response"]
        tokens, cost = int(rec.get("tokens", 0)), float(rec.get("cost_usd", 0.0))
        task.tokens += tokens
        task.cost_usd += cost
        state.tokens += tokens
        state.cost_usd += cost
        if task.attempts:
            task.attempts[-1].tokens += tokens
            task.attempts[-1].cost_usd += cost
    elif kind == "task_skipped":
        # A false `when:` skips without an error; an upstream failure carries its category.
        task.status = TaskStatus.SKIPPED.value
        task.reason = rec.get("reason")
        task.error = ({"category": rec["category"], "message": rec.get("reason", "")}
                      if rec.get("category") else None)
        task.ended_at = at
    elif kind == "task_failed":
        task.status = TaskStatus.FAILED.value
        task.error = {"category": rec["category"], "message": rec.get("message", "")}
        task.ended_at = at
    elif kind == "tasks_expanded":
        task.group = "foreach"
        task.status = TaskStatus.RUNNING.value
        task.started_at = task.started_at or at
        for inst in rec["instances"]:
            _add_child(state, task, inst["id"], "instance", needs=list(task.needs),
                       index=inst["index"], item=inst.get("item"))
    elif kind == "loop_iteration":
        task.group = "loop"
        task.status = TaskStatus.RUNNING.value
        task.started_at = task.started_at or at
        n = rec["iteration"]
        task.iteration = n
        maker, checker = rec["maker"], rec["checker"]
        _add_child(state, task, maker["id"], "maker", needs=list(task.needs), iteration=n,
                   runner=maker["runner"], effects=maker["effects"], skill=maker.get("skill"))
        _add_child(state, task, checker["id"], "checker", needs=[maker["id"]], iteration=n,
                   runner=checker["runner"], effects=checker["effects"], skill=checker.get("skill"))
    elif kind == "group_ended":
        task.exit_reason = rec.get("exit_reason")
        task.ended_at = at
        if rec["status"] == "complete":
            task.status = TaskStatus.COMPLETE.value
            task.report = rec.get("report")
            task.error = None
        else:
            task.status = rec["status"]
            task.report = rec.get("report")
            task.error = {"category": rec.get("category", "upstream_failed"),
                          "message": rec.get("message", "")}
    elif kind == "task_needs_review":
        task.status = TaskStatus.NEEDS_REVIEW.value
        task.reason = rec.get("reason")
        task.error = {"category": "crashed", "message": rec.get("reason", "")}
    elif kind == "task_waiting_approval":
        task.status = TaskStatus.WAITING_APPROVAL.value
    elif kind == "approval":
        if rec["decision"] == "approved":
            task.approved = True
            if task.status == TaskStatus.WAITING_APPROVAL.value:
                task.status = TaskStatus.PENDING.value
        else:
            task.status = TaskStatus.FAILED.value
            task.error = {"category": "rejected",
                          "message": f"rejected by {rec.get('by')}: {rec.get('note', '')}"}
            task.ended_at = at
    elif kind == "task_taken_over":
        task.status = TaskStatus.COMPLETE.value
        task.report = rec["report"]
        task.error = None
        task.reason = f"completed by {rec.get('by')}"
        task.ended_at = at
    elif kind == "task_cancelled":
        task.status = TaskStatus.CANCELLED.value
        task.error = {"category": "cancelled", "message": rec.get("reason", "cancelled")}
        task.ended_at = at
    elif kind == "task_reset":
        task.calls.clear()  # a person asks for a fresh try, not a replay of paid replies
        task.status = TaskStatus.PENDING.value
        task.error = None
        task.reason = None
        task.failures = 0
        task.report = None
        task.ended_at = None
        task.exit_reason = None
    elif kind == "group_reopened":
        task.status = TaskStatus.RUNNING.value
        task.error = None
        task.ended_at = None


def _add_child(state: RunState, parent: TaskState, cid: str, role: str, *, needs: list[str],
               index: int | None = None, item: Any = None, iteration: int | None = None,
               runner: str | None = None, effects: str | None = None,
               skill: str | None = None) -> None:
    state.tasks[cid] = TaskState(
        id=cid, wave=parent.wave, needs=needs, effects=effects or parent.effects,
        runner=runner or parent.runner, skill=skill if role != "instance" else parent.skill,
        heartbeat=parent.heartbeat, parent=parent.id, role=role, index=index, item=item,
        iteration=iteration,
    )
    parent.children.append(cid)


def _error(rec: dict[str, Any]) -> dict[str, str] | None:
    if rec.get("category"):
        return {"category": rec["category"], "message": rec.get("message") or ""}
    return None


def replay(records: list[dict[str, Any]], base: RunState | None = None) -> RunState:
    state = base or RunState()
    for rec in records:
        apply(state, rec)
    return state
