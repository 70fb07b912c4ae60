"""The run loop: dispatch waves, collect outcomes, log every fact before acting on it.

The scheduler is *given* its journal, definition, state, runners and reporter; it prints
nothing. One pass of the loop:

1. pick the tasks that may start (from the state, which already holds the endings staged
   at the end of the last pass), and stage ``attempt_started`` for each;
2. commit: one write and one fsync for everything staged -- the last pass's endings, the
   skips and group steps they caused, these starts. Only now is anything acted on: output
   files written, lines printed, the attempts started;
3. wait for an attempt to end (or a tick);
4. stage each ending (with its validated report), the retry decision, the skips it causes,
   the fan-out and loop steps; back to 1, with no await in between.

A record is applied to the in-memory state when it is staged (``emit``), so step 1 sees a
task that just completed and may start what needs it; nothing outside this process sees
either before the commit in step 2, so a report is durable before any task that needs it
is dispatched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agentctl import expr, prompts
from agentctl.definitions import Definition
from agentctl.errors import RunnerError
from agentctl.models import StepSpec, TaskSpec
from agentctl.reports import validate_report
from agentctl.runners.base import Attempt, Outcome, Registry
from agentctl.state import RunState, TaskState, apply
from agentctl.store import (
    Journal,
    RunDir,
    fresh_beat,
    touch,
    write_atomic,
    write_json_atomic,
    write_output,
)
from agentctl.vocab import SETTLED, Effects, TaskStatus

# Records after which a task that was settled (or parked) may be pending again, or a
# complete task not complete: _candidates and the needs cache start afresh.
_REWINDS = frozenset({"task_reset", "group_reopened", "approval", "task_taken_over"})
PARKED = frozenset({TaskStatus.WAITING_APPROVAL.value, TaskStatus.NEEDS_REVIEW.value})
_PENDING, _COMPLETE = TaskStatus.PENDING.value, TaskStatus.COMPLETE.value
_SETTLED_OR_PARKED = frozenset({str(x.value) for x in SETTLED}) | PARKED


class Reporter(Protocol):
    def event(self, rec: dict[str, Any], state: RunState) -> None: ...
    def tick(self, state: RunState) -> None: ...


class NullReporter:
    def event(self, rec: dict[str, Any], state: RunState) -> None:
        pass

    def tick(self, state: RunState) -> None:
        pass


@dataclass
class Options:
    concurrency: int = 4
    model_override: str | None = None
    tick_s: float = 0.25
    snapshot_every_s: float = 2.0
    driver_beat_s: float = 1.0
    backoff_cap_s: float = 60.0
    seed: int | None = None


@dataclass
class _Running:
    task_id: str
    attempt: int
    future: asyncio.Task[Outcome]
    started: float
    deadline: float
    heartbeat_s: float | None
    last_life: float
    beat_sig: tuple[int, int] | None = None
    kill_reason: str | None = None
    kill_message: str = ""
    superseded: bool = False  # a person took the task over while it ran


def needs_approval(defn: Definition, t: TaskState) -> bool:
    """A task with `approval: required` or irreversible effects waits for a person. A loop
    never asks for itself (its runner is "loop"): an irreversible maker or checker asks,
    every iteration. A fan-out asks once, for the group, not per instance."""
    if t.parent is None:
        return t.id in defn.pipeline.tasks and defn.needs_approval(t.id)
    return t.role in ("maker", "checker") and t.effects == Effects.IRREVERSIBLE.value


def idempotency_key(run_id: str, task_id: str) -> str:
    """The same for every attempt of a task, so a re-run after a crash can be deduplicated."""
    return "agentctl-" + hashlib.sha256(f"{run_id}\x00{task_id}".encode()).hexdigest()[:32]


class Scheduler:
    def __init__(self, run: RunDir, journal: Journal, definition: Definition, state: RunState,
                 registry: Registry, reporter: Reporter | None = None,
                 options: Options | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.run = run
        self.journal = journal
        self.defn = definition
        self.state = state
        self.registry = registry
        self.reporter = reporter or NullReporter()
        self.opt = options or Options()
        self.clock = clock
        self.rng = random.Random(self.opt.seed)
        self._batch: list[dict[str, Any]] = []
        self._outputs: list[str] = []
        self._running: dict[str, _Running] = {}
        self._backoff: dict[str, float] = {}
        self._interrupt: str | None = None
        self._budget_stop: str | None = None
        self._expressions: dict[int, bool] = {}
        self._group: asyncio.Future[None] | None = None  # a pending group commit
        self._last_control = -1.0
        self._last_snapshot = 0.0
        self._snapshot_gap = self.opt.snapshot_every_s  # grows with the snapshot's cost
        # _dependents: (task count, reverse graph, file order); (batch, tasks walked in it)
        self._rev: tuple[int, dict[str, list[str]], dict[str, int]] | None = None
        self._walked: tuple[list[dict[str, Any]], set[str]] | None = None
        self._groups: tuple[int, list[TaskState]] | None = None  # (task count, group tasks)
        self._last_beat = 0.0
        self._env_base = dict(os.environ)
        # _candidates: (task count, tasks by wave); the barrier wave; tasks whose needs are
        # all complete; set when a record may have made a settled task pending again.
        self._waves: tuple[int, list[list[TaskState]]] | None = None
        self._barrier = 0
        self._ready: set[str] = set()
        self._rewound = False
        self._keys: dict[str, str] = {}
        self._needs_json: dict[tuple[str, ...], tuple[tuple[Any, ...], str]] = {}

    # ------------------------------------------------------------------ specs

    def _spec(self, tid: str) -> StepSpec:
        """What runs for a task: its own spec, its fan-out template's, or its loop's maker
        or checker."""
        t = self.state.tasks[tid]
        if t.parent is not None:
            return self.defn.step(t.parent, t.role if t.role in ("maker", "checker") else None)
        return self.defn.step(tid)

    def _top(self, tid: str) -> TaskSpec | None:
        return self.defn.pipeline.tasks.get(tid)

    # ------------------------------------------------------------------ journal

    def emit(self, rec: dict[str, Any]) -> None:
        """Stage a fact: numbered, masked and applied to the in-memory state now, made
        durable by the next ``commit``. Until then nothing outside this process acts on it:
        no attempt starts, no file is written, no person is answered, nothing is printed.
        So a pass decides from everything it has learnt (a task that just completed lets
        its dependents start), and the endings and the starts share one fsync."""
        full = self.journal.stage(rec)
        apply(self.state, full)
        self._batch.append(full)
        if full["type"] in _REWINDS:
            self._rewound = True  # a settled task may be pending again: _pick looks afresh

    def commit(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self.journal.flush()  # one write, one fsync
        for rec in batch:
            self.reporter.event(rec, self.state)
        for tid in self._outputs:
            t = self.state.tasks[tid]
            # An in-process runner that declares `uses_files = False` (noop) gets no task
            # directory at all: its report is in the WAL (status --json, logs).
            if t.report is not None and (t.group is not None or self._uses_files(t.runner)):
                try:
                    write_output(self.run.task_dir(tid), t.report)
                except OSError as e:
                    _file_warning(e)
        self._outputs.clear()

    def _uses_files(self, runner: str) -> bool:
        return bool(getattr(self._runner(runner), "uses_files", True))

    def snapshot(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_snapshot < self._snapshot_gap:
            return
        self._last_snapshot = now
        began = time.perf_counter()
        data = self.state.to_dict()
        data["wal_seq"] = self.journal.seq
        data["wal_offset"] = self.journal.offset()
        # Compact (the C encoder): indent=2 would triple its cost on a big run; `jq .` reads it.
        write_json_atomic(self.run.snapshot, data, durable=True, compact=True)
        # run.json is derived (the WAL is the truth; status replays the WAL) and costs
        # O(tasks) to write: a big run would spend a third of its time on it at one a
        # second. Keep it under ~2%.
        self._snapshot_gap = max(self.opt.snapshot_every_s, 50 * (time.perf_counter() - began))

    # ------------------------------------------------------------------ the loop

    async def drive(self) -> str:
        """Run until every task is settled or parked, or until interrupted. Returns the run's
        final status (also logged as ``run_ended``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.interrupt, "interrupted" if sig == signal.SIGINT else "terminated")
        try:
            self._skip_unreachable()
            self._advance_groups()
            self.commit()
            # run.json is derived and costs O(tasks): the first is written after
            # `snapshot_every_s`, or at the end of a shorter drive (status reads the WAL).
            self._last_snapshot = self.clock()
            # Every record is staged (applied in memory) as it is decided and committed
            # before the next await: a pass's endings, skips, group steps and starts share
            # one fsync, and nothing acts on a record before it.
            while True:
                self.poll_control()
                if self._interrupt:
                    self.commit()
                    await self._stop_all()
                    status = "interrupted" if self._interrupt != "cancelled" else "cancelled"
                    return self._end(status, f"run {self._interrupt}")
                now = self.clock()
                staged = len(self._batch)  # the last pass's endings, not yet committed
                starts = self._pick(now)
                progressed = len(self._batch) > staged  # expansions, skips, approvals to wait for
                for tid in starts:
                    self._log_start(tid)
                self.commit()  # the attempts are durable before any of them starts
                self.reporter.tick(self.state)
                self.snapshot()
                for tid in starts:
                    self._launch(tid, now)
                if not self._running:
                    # A group can be ready to settle with nothing running: reopened after a
                    # person completed its last failed instance, for instance.
                    self._advance_groups()
                    if self._batch:
                        self.commit()
                        continue
                    if all(t.settled or t.status in PARKED for t in self.state.tasks.values()):
                        break
                    for tid in [k for k in self._backoff
                                if self.state.tasks[k].status != TaskStatus.PENDING.value]:
                        del self._backoff[tid]  # taken over or reset by a person meanwhile
                    if self._backoff:
                        wait = max(0.0, min(self._backoff.values()) - self.clock())
                        await asyncio.sleep(min(wait, self.opt.tick_s))
                        self._beat_driver()
                        continue
                    if not starts and not progressed:
                        break  # nothing can progress (parked tasks block the rest)
                    continue
                futures = [r.future for r in self._running.values()]
                done, _ = await asyncio.wait(futures, timeout=self.opt.tick_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                for r in [r for r in self._running.values() if r.future in done]:
                    self._finish(r)
                self._watch()
                self._advance_groups()  # fan-out joins and loop iterations
                self._beat_driver()
                # (committed at the top of the next pass, with the starts it allows)
            status = self._final_status()
            return self._end(status, self._budget_stop if status == "budget_exceeded" else None)
        finally:
            with contextlib.suppress(Exception):  # a runner's cleanup must not mask the ending
                await self.registry.aclose()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def interrupt(self, reason: str = "interrupted") -> None:
        if not self._interrupt:
            self._interrupt = reason

    def poll_control(self, *, force: bool = False) -> None:
        """Carry out requests that people dropped into ``control/`` (see control.py)."""
        now = self.clock()
        if not force and now - self._last_control < self.opt.tick_s:
            return
        self._last_control = now
        from agentctl import control

        requests = control.pending_requests(self.run)
        if not requests:
            return
        schemas = {}
        for tid in self.state.tasks:
            spec = self._spec(tid)
            if spec.skill in self.defn.skills:
                schemas[tid] = self.defn.skills[spec.skill].output_schema
        gated = {t.id for t in self.state.tasks.values() if needs_approval(self.defn, t)}
        answers = []
        for path, req in requests:
            if req is None:
                answers.append((path, False, "unreadable request"))
                continue
            try:
                records, message = control.decide(self.state, req, schemas, driver_alive=True,
                                                  gated=gated)
            except Exception as e:  # a bad request must not stop the run
                answers.append((path, False, str(e)))
                continue
            for rec in records:
                self.emit(rec)
                self._on_control(rec, req)
            self.commit()  # durable before the person is told
            answers.append((path, True, message))
        # A task a person put back may still need another task that failed: skip it again
        # now, with its reason, rather than leave it pending in a run that cannot finish it.
        self._skip_unreachable()
        self.commit()
        for path, ok, message in answers:
            control.answer(path, ok, message)

    def _on_control(self, rec: dict[str, Any], req: dict[str, Any]) -> None:
        kind = rec["type"]
        if kind == "cancel_requested":
            self.interrupt("cancelled")
        elif kind == "task_taken_over" and rec["task"] in self._running:
            r = self._running[rec["task"]]
            r.superseded = True
            r.kill_reason = "cancelled"
            r.kill_message = f"superseded: completed by {rec.get('by')}"
            r.future.cancel()
        elif kind == "task_taken_over":
            self._outputs.append(rec["task"])

    # ------------------------------------------------------------------ picking

    def _pick(self, now: float) -> list[str]:
        free = self.opt.concurrency - len(self._running)
        if free <= 0:
            return []
        over = self._over_budget()
        if over:
            self._budget_stop = over
            return []
        tasks = self.state.tasks
        out: list[str] = []
        for t in self._candidates():
            if len(out) >= free:
                break
            if t.status != _PENDING:
                continue
            if self._backoff.get(t.id, 0.0) > now:
                continue
            if t.id in self._ready or all(tasks[n].status == _COMPLETE for n in t.needs):
                self._ready.add(t.id)
                top = self._top(t.id)
                if top is not None and top.when and self._condition(t, top):
                    continue  # skipped by its condition (or the condition failed)
                if not t.approved and needs_approval(self.defn, t):
                    # A person decides; other branches go on meanwhile.
                    self.emit({"type": "task_waiting_approval", "task": t.id})
                    continue
                if top is not None and (top.foreach or top.loop):
                    self._shape(t, top)  # becomes a group of children
                    continue
                self._backoff.pop(t.id, None)
                out.append(t.id)
        return out

    def _candidates(self) -> list[TaskState]:
        """The tasks of the barrier wave: the first wave with a task neither settled nor
        parked for a person (waves run in order; parked tasks let other branches go on).

        Not a scan of every task per pass: the waves before the barrier are known settled
        until a record rewinds a task (a reset, a reopened group, an approval) or tasks are
        added (fan-out, loops), and only then is it looked for from the first wave again."""
        tasks = self.state.tasks
        if self._waves is None or self._waves[0] != len(tasks) or self._rewound:
            by_wave: list[list[TaskState]] = []
            for t in tasks.values():
                while len(by_wave) <= t.wave:
                    by_wave.append([])
                by_wave[t.wave].append(t)
            self._waves = (len(tasks), by_wave)
            self._barrier = 0
            self._ready.clear()
            self._rewound = False
        by_wave = self._waves[1]
        done_or_parked = _SETTLED_OR_PARKED  # plain strings: no enum lookup per task
        while self._barrier < len(by_wave):
            wave = by_wave[self._barrier]
            if any(t.status not in done_or_parked for t in wave):
                return wave
            self._barrier += 1
        return []

    # ------------------------------------------------------------------ conditions, fan-out, loops

    def _condition(self, t: TaskState, top: TaskSpec) -> bool:
        """Apply a ready task's `when`. True when the task is settled by it (skipped)."""
        ctx = self._context(t.id)
        if top.when:
            src = top.when if "${{" in top.when else "${{ " + top.when + " }}"
            try:
                ok = expr.truthy(expr.render(src.strip(), ctx))
            except expr.ExprError as e:
                self.emit({"type": "task_failed", "task": t.id, "category": "upstream_failed",
                           "message": f"when: {e}"})
                self._skip_dependents(t.id)
                return True
            if not ok:
                self.emit({"type": "task_skipped", "task": t.id,
                           "reason": f"condition is false: {top.when.strip()}"})
                self._skip_dependents(t.id)
                return True
        return False

    def _shape(self, t: TaskState, top: TaskSpec) -> None:
        """A ready `foreach` or `loop` task becomes a group of children."""
        if t.children:
            self._reopen(t, top)  # a settled group sent back to pending (retry)
            return
        if top.foreach:
            self._expand(t, top, self._context(t.id))
        elif top.loop:
            self._iterate(t, top, 1)

    def _expand(self, t: TaskState, top: TaskSpec, ctx: dict[str, Any]) -> None:
        """Fan out: one instance per item. The expansion is logged (and committed before any
        instance starts), so a resume dispatches exactly the same instances."""
        assert top.foreach is not None
        try:
            items = expr.render(top.foreach.strip(), ctx)
        except expr.ExprError as e:
            items = e
        problem = None
        if isinstance(items, Exception):
            problem = f"foreach: {items}"
        elif not isinstance(items, list):
            problem = f"foreach: expected a list, got {type(items).__name__}"
        elif len(items) > self.defn.pipeline.limits.fanout:
            problem = (f"foreach: {len(items)} items is more than limits.fanout "
                       f"({self.defn.pipeline.limits.fanout})")
        ids: list[str] = []
        if problem is None:
            assert isinstance(items, list)
            for i, item in enumerate(items):
                suffix = str(i)
                if top.key:
                    try:
                        raw = expr.render_str(top.key, {**ctx, "item": item})
                    except expr.ExprError as e:
                        problem = f"key: {e}"
                        break
                    suffix = _safe_suffix(raw)
                    if not suffix:
                        problem = f"key: item {i} gives an empty instance name ({raw!r})"
                        break
                cid = f"{t.id}.{suffix}"
                if cid in ids or cid in self.state.tasks:
                    problem = f"key: two items give the instance name '{cid}'"
                    break
                ids.append(cid)
        if problem is not None:
            self.emit({"type": "task_failed", "task": t.id, "category": "invalid_output",
                       "message": problem})
            self._skip_dependents(t.id)
            return
        assert isinstance(items, list)
        if not items:
            self.emit({"type": "group_ended", "task": t.id, "status": "complete",
                       "report": _join_report(t.id, [])})
            self._outputs.append(t.id)
            return
        self.emit({"type": "tasks_expanded", "task": t.id,
                   "instances": [{"id": cid, "index": i, "item": item}
                                 for i, (cid, item) in enumerate(zip(ids, items, strict=True))]})

    def _reopen(self, t: TaskState, top: TaskSpec) -> None:
        """Retry a group (`agentctl retry`, `resume --retry-failed`). A fan-out keeps its
        instances -- it is never expanded twice -- and runs again those that did not
        complete; a loop reruns the unfinished steps of its last iteration, or, when that
        iteration completed without passing, goes on with one more."""
        kids = [self.state.tasks[c] for c in t.children]
        if t.group == "loop":
            assert top.loop is not None and t.iteration is not None
            kids = [k for k in kids if k.iteration == t.iteration]
            if all(k.status == TaskStatus.COMPLETE.value for k in kids):
                self._iterate(t, top, t.iteration + 1)
                return
        for k in kids:
            if k.status not in (TaskStatus.COMPLETE.value, TaskStatus.PENDING.value):
                self.emit({"type": "task_reset", "task": k.id, "by": "agentctl",
                           "reason": f"'{t.id}' is retried"})
        self.emit({"type": "group_reopened", "task": t.id})

    def _iterate(self, t: TaskState, top: TaskSpec, n: int) -> None:
        assert top.loop is not None
        steps = {}
        for role in ("maker", "checker"):
            step = getattr(top.loop, role)
            steps[role] = {"id": f"{t.id}.{role}.{n}", "runner": self.defn.runner_for(step),
                           "effects": self.defn.effects_for(step).value, "skill": step.skill}
        self.emit({"type": "loop_iteration", "task": t.id, "iteration": n, **steps})

    def _advance_groups(self) -> None:
        """Settle fan-out groups whose instances have all settled, and take review loops one
        step: pass, stop, or the next iteration. Reads committed state only."""
        tasks = self.state.tasks
        if self._groups is None or self._groups[0] != len(tasks):
            # Every pass used to look at every task. A task becomes a group as its first
            # children are added, so the groups change only when the number of tasks does.
            self._groups = (len(tasks), [t for t in tasks.values() if t.group is not None])
        for g in self._groups[1]:
            if g.status != TaskStatus.RUNNING.value or not g.children or g.group is None:
                continue
            kids = [self.state.tasks[c] for c in g.children]
            if g.group == "foreach":
                if not all(k.settled for k in kids):
                    continue
                bad = [k for k in kids if k.status != TaskStatus.COMPLETE.value]
                if not bad:
                    self.emit({"type": "group_ended", "task": g.id, "status": "complete",
                               "report": _join_report(g.id, [k.report or {} for k in kids])})
                    self._outputs.append(g.id)
                else:
                    names = ", ".join(k.id for k in bad[:5]) + (" ..." if len(bad) > 5 else "")
                    self.emit({"type": "group_ended", "task": g.id, "status": "failed",
                               "category": "upstream_failed",
                               "message": f"{len(bad)} of {len(kids)} instances did not complete: {names}"})
                    self._skip_dependents(g.id)
            else:
                self._advance_loop(g)

    def _advance_loop(self, g: TaskState) -> None:
        top = self._top(g.id)
        assert top is not None and top.loop is not None and g.iteration is not None
        n = g.iteration
        maker = self.state.tasks[f"{g.id}.maker.{n}"]
        checker = self.state.tasks[f"{g.id}.checker.{n}"]
        if not (maker.settled and checker.settled):
            return

        def stop(reason: str, category: str, message: str) -> None:
            self.emit({"type": "group_ended", "task": g.id, "status": "failed",
                       "exit_reason": reason, "category": category, "message": message,
                       "report": maker.report})
            self._skip_dependents(g.id)

        if maker.status != TaskStatus.COMPLETE.value or checker.status != TaskStatus.COMPLETE.value:
            who = maker if maker.status != TaskStatus.COMPLETE.value else checker
            err = who.error or {}
            stop("failed", err.get("category", "upstream_failed"),
                 f"iteration {n}: {who.id} {who.status}: {err.get('message', '')}")
            return
        # `until` may name what `when` may (inputs, the needed tasks' reports), as validate
        # lets it.
        view = {**self._context(g.id), "maker": maker.report, "checker": checker.report,
                "iteration": n}
        try:
            passed = expr.truthy(expr.render(_as_template(top.loop.until), view))
        except expr.ExprError as e:
            stop("failed", "invalid_output", f"until: {e}")
            return
        if passed:
            self.emit({"type": "group_ended", "task": g.id, "status": "complete",
                       "exit_reason": "passed", "report": maker.report})
            self._outputs.append(g.id)
            return
        prev = self.state.tasks.get(f"{g.id}.maker.{n - 1}")
        if prev is not None and _same_work(prev.report, maker.report):
            stop("no_progress", "blocked",
                 f"the maker returned the same output in iterations {n - 1} and {n}")
            return
        if n >= top.loop.max_iterations:
            stop("max_iterations", "blocked",
                 f"the checker did not pass after {n} iteration(s) (max_iterations)")
            return
        budget = top.loop.budget
        if budget is not None:
            spent = sum(self.state.tasks[c].cost_usd for c in g.children)
            used = sum(self.state.tasks[c].tokens for c in g.children)
            if (budget.usd is not None and spent >= budget.usd) or (
                    budget.tokens is not None and used >= budget.tokens):
                stop("budget", "budget", f"the loop's budget is spent after {n} iteration(s)")
                return
        self._iterate(g, top, n + 1)

    # ------------------------------------------------------------------ budget

    def _limits(self) -> tuple[float | None, int | None]:
        b = self.defn.pipeline.limits.budget
        usd = self.state.options.get("budget_usd", b.usd)
        tokens = self.state.options.get("budget_tokens", b.tokens)
        return usd, tokens

    def _over_budget(self) -> str | None:
        usd, tokens = self._limits()
        if usd is not None and self.state.cost_usd >= usd:
            return f"spent ${self.state.cost_usd:.4f} of a ${usd:g} budget"
        if tokens is not None and self.state.tokens >= tokens:
            return f"used {self.state.tokens} of a {tokens}-token budget"
        return None

    def _skip_unreachable(self) -> None:
        """Skip pending tasks whose needs have settled without completing (for instance
        after a resume of a run whose tasks failed)."""
        for t in self.state.tasks.values():
            if t.status in (TaskStatus.FAILED.value, TaskStatus.BLOCKED.value,
                            TaskStatus.SKIPPED.value, TaskStatus.CANCELLED.value):
                self._skip_dependents(t.id)

    def _skip_dependents(self, failed: str) -> None:
        staged = {r["task"] for r in self._batch if r["type"] == "task_skipped"}
        src = self.state.tasks[failed]
        how = {"failed": "failed", "blocked": "is blocked", "skipped": "was skipped",
               "cancelled": "was cancelled"}.get(src.status, src.status)
        # Skipping past a false `when:` is not a failure; skipping past a failure is.
        category = None if src.status == "skipped" and src.error is None else "upstream_failed"
        for dep in self._dependents(failed):
            t = self.state.tasks[dep]
            if t.status == TaskStatus.PENDING.value and dep not in staged:
                direct = failed in t.needs
                reason = (f"needs '{failed}', which {how}" if direct
                          else f"an upstream task ('{failed}') {how}")
                rec = {"type": "task_skipped", "task": dep, "reason": reason}
                if category:
                    rec["category"] = category
                self.emit(rec)
                staged.add(dep)

    def _dependents(self, root: str) -> list[str]:
        """``planning.dependents(root)`` over the run's tasks (file order), without walking
        the whole graph per call: 100 failures in front of 1,000 tasks took 1.5 s.

        - The reverse graph is kept until a task is added: a task's needs never change.
        - A task that an earlier call walked during this same batch is left out, with all
          below it: each pending task below it was skipped by that call, and the caller
          would skip it anyway."""
        tasks = self.state.tasks
        if self._rev is None or self._rev[0] != len(tasks):
            rev: dict[str, list[str]] = {t: [] for t in tasks}
            for task in tasks.values():
                for d in task.needs:
                    if d in rev:
                        rev[d].append(task.id)
            self._rev = (len(tasks), rev, {t: i for i, t in enumerate(tasks)})
        _, rev, order = self._rev
        if self._walked is None or self._walked[0] is not self._batch:
            self._walked = (self._batch, set())  # a new batch: commit() replaced the list
        walked = self._walked[1]
        out: list[str] = []
        seen = {root}
        frontier = [root]
        while frontier:
            nxt = []
            for t in frontier:
                for u in rev.get(t, ()):
                    if u not in seen and u not in walked:
                        seen.add(u)
                        out.append(u)
                        nxt.append(u)
            frontier = nxt
        walked.update(out)
        return sorted(out, key=order.__getitem__)

    # ------------------------------------------------------------------ starting

    def _log_start(self, tid: str) -> None:
        t = self.state.tasks[tid]
        rec: dict[str, Any] = {"type": "attempt_started", "task": tid, "attempt": t.attempt + 1,
                               "key": self._key(tid)}
        model = self._models(tid)
        if model:
            rec["model"] = model[0]
        self.emit(rec)

    def _key(self, tid: str) -> str:
        key = self._keys.get(tid)
        if key is None:
            key = self._keys[tid] = idempotency_key(self.state.run_id, tid)
        return key

    def _models(self, tid: str) -> list[str]:
        if self.state.tasks[tid].runner != "llm":
            return []
        m = self.defn.model_for(self._spec(tid), self.opt.model_override)
        if m is None:
            return []
        return list(self.defn.pipeline.models.get(m, [m]))

    def _context(self, tid: str) -> dict[str, Any]:
        """What expressions of a task may name: inputs, the reports it needs, and for
        children of a group their item or loop state."""
        t = self.state.tasks[tid]
        base = self.state.tasks[t.parent] if t.parent else t
        tasks: dict[str, Any] = {}
        for n in base.needs:
            rep = self.state.tasks[n].report or {}
            tasks[n] = {"output": rep.get("output"), "summary": rep.get("summary"),
                        "status": rep.get("status"), "deliverables": rep.get("deliverables", []),
                        "blockers": rep.get("blockers", []), "next": rep.get("next")}
        ctx: dict[str, Any] = {"inputs": self.state.inputs, "tasks": tasks}
        if t.role == "instance":
            ctx["item"] = t.item
        elif t.role in ("maker", "checker"):
            ctx["loop"] = self._loop_view(t)
        return ctx

    def _loop_view(self, t: TaskState) -> dict[str, Any]:
        """A loop child's view: the iteration, the checker's last feedback and the maker's
        last output for a maker; the maker's report for a checker."""
        assert t.parent is not None and t.iteration is not None
        n = t.iteration
        get = self.state.tasks.get
        view: dict[str, Any] = {"iteration": n}
        if t.role == "maker":
            prev_checker = get(f"{t.parent}.checker.{n - 1}")
            prev_maker = get(f"{t.parent}.maker.{n - 1}")
            view["feedback"] = prev_checker.report if prev_checker else None
            view["previous"] = prev_maker.report if prev_maker else None
        else:
            maker = get(f"{t.parent}.maker.{n}")
            view["maker"] = maker.report if maker else None
        return view

    def _launch(self, tid: str, now: float) -> None:
        t = self.state.tasks[tid]
        n = t.attempt
        try:
            ctx, prepare = self._attempt(t, n)
            coro = self._execute(t.runner, ctx, prepare)
        except expr.ExprError as e:
            coro = _fail("upstream_failed", f"cannot fill in the task's inputs: {e}")
        spec = self._spec(tid)
        self._running[tid] = _Running(
            task_id=tid, attempt=n, future=asyncio.ensure_future(coro), started=now,
            deadline=now + self.defn.timeout_for(spec), heartbeat_s=self.defn.heartbeat_for(spec),
            last_life=now,
        )

    def _attempt(self, t: TaskState, n: int) -> tuple[Attempt, Callable[[], None] | None]:
        """The attempt, and the file work to do before it may start (None: none). That work
        is done on the event loop's thread: a thread of its own measured slower (handing
        work over and back cost more than the creates it moved, on a quiet disk)."""
        spec = self._spec(t.id)
        # Building the expression context costs O(needs); most tasks have no expression.
        plain = t.role not in ("maker", "checker") and not self._has_expression(spec)
        ctx = {} if plain else self._context(t.id)
        with_ = expr.render(spec.with_, ctx)
        argv = [expr.render_str(a, ctx) for a in spec.command] if spec.command else None
        # A group's children receive what the group needs: a checker too (its own need, the
        # maker, reaches it as loop.maker), so it can check the draft against the evidence.
        owner = self.state.tasks[t.parent] if t.parent else t
        needs = {d: self.state.tasks[d].report or {} for d in owner.needs if d in self.state.tasks
                 and self.state.tasks[d].parent is None}
        extra: dict[str, Any] = {}
        if t.role == "instance":
            extra = {"item": t.item, "index": t.index}
        elif t.role in ("maker", "checker"):
            extra = {"loop": ctx["loop"]}
        pkt = prompts.packet(self.state.run_id, t.id, n, with_, needs, extra)
        skill = self.defn.skills.get(spec.skill) if spec.skill else None

        task_dir = self.run.task_dir(t.id)
        # An in-process runner that declares `uses_files = False` (noop) reads nothing from
        # disk: making its directory and files would be most of its cost.
        files = self._uses_files(t.runner)
        input_path = task_dir / "input.json"
        prompt = prompts.rendered_prompt(pkt, skill) if skill else None
        # prompt.md is for a process ($AGENTCTL_PROMPT); an in-process runner is handed the
        # prompt, and the llm runner's exchange.json records it as sent.
        prompt_path = (self.run.attempt_file(t.id, n, "prompt.md")
                       if prompt is not None and argv is not None else None)
        hb_path = self.run.heartbeat_file(t.id)
        prepare = None
        if files:
            packet_text = self._packet_json(pkt)

            def prepare() -> None:
                self.run.make_task_dir(t.id)
                write_atomic(input_path, packet_text.encode(), durable=False)
                if prompt is not None and prompt_path is not None:
                    write_atomic(prompt_path, prompt.encode(), durable=False)
                if argv is not None:
                    # A process may beat with utime or `touch -c`: its file must exist, and
                    # be ours (0600). An in-process runner's is made at its first beat
                    # (ours, 0.5 s in); `status` counts from the attempt's start until then.
                    fresh_beat(hb_path)
        output_path = self.run.attempt_file(t.id, n, "report.json")
        workspace = Path(self.state.workspace or ".")
        workdir = workspace / spec.workdir if spec.workdir else workspace
        key = self._key(t.id)
        env: dict[str, str] = {}
        if argv is not None:  # a process's environment; in-process runners have none
            extra_env = {**self.defn.pipeline.defaults.env, **spec.env}
            env = {
                **self._env_base, **{k: expr.render_str(v, ctx) for k, v in extra_env.items()},
                "AGENTCTL_RUN_ID": self.state.run_id, "AGENTCTL_TASK_ID": t.id,
                "AGENTCTL_ATTEMPT": str(n), "AGENTCTL_IDEMPOTENCY_KEY": key,
                "AGENTCTL_INPUT": str(input_path), "AGENTCTL_OUTPUT": str(output_path),
                "AGENTCTL_HEARTBEAT": str(hb_path), "AGENTCTL_WORKSPACE": str(workspace),
            }
            if prompt_path is not None:
                env["AGENTCTL_PROMPT"] = str(prompt_path)
        models = self._models(t.id)
        budget_usd, budget_tokens = self._budget_left(t.id)
        return Attempt(
            run_id=self.state.run_id, task_id=t.id, attempt=n, idempotency_key=key, spec=spec,
            skill=skill, model=models[0] if models else None, models=models,
            workspace=workspace, workdir=workdir, task_dir=task_dir,
            input_path=input_path, output_path=output_path, prompt_path=prompt_path,
            heartbeat_path=hb_path, packet=pkt, prompt=prompt, argv=argv, env=env,
            beat=self._beater(t.id, hb_path), record_call=self._call_recorder(t.id, n),
            cached_calls=dict(t.calls), budget_usd=budget_usd, budget_tokens=budget_tokens,
        ), prepare

    def _packet_json(self, pkt: dict[str, Any]) -> str:
        """The packet as compact JSON (input.json), its `needs` last. The tasks of a wave
        that need the same tasks share their needs' JSON, encoded once while those reports
        stay the same objects: 100 reports took 0.1 ms to encode for each of 100 tasks."""
        needs: dict[str, Any] = pkt["needs"]
        reports = tuple(needs.values())
        key = tuple(needs)
        hit = self._needs_json.get(key)
        if hit is None or len(hit[0]) != len(reports) or any(
                a is not b for a, b in zip(hit[0], reports, strict=True)):
            # The entry holds the reports themselves, so none is freed and its id reused.
            hit = self._needs_json[key] = (reports, _compact(needs))
        head = _compact({k: v for k, v in pkt.items() if k != "needs"})
        return f'{head[:-1]},"needs":{hit[1]}}}\n'

    def _budget_left(self, tid: str) -> tuple[float | None, int | None]:
        """What this attempt may spend: the least of the run's and the task's remainders."""
        usd, tokens = self._limits()
        left_usd = None if usd is None else usd - self.state.cost_usd
        left_tok = None if tokens is None else tokens - self.state.tokens
        spec = self._top(tid)
        t = self.state.tasks[tid]
        if spec is not None and spec.budget is not None:
            if spec.budget.usd is not None:
                mine = spec.budget.usd - t.cost_usd
                left_usd = mine if left_usd is None else min(left_usd, mine)
            if spec.budget.tokens is not None:
                mine_t = spec.budget.tokens - t.tokens
                left_tok = mine_t if left_tok is None else min(left_tok, mine_t)
        return left_usd, left_tok

    def _beater(self, tid: str, path: Path) -> Callable[[], None]:
        # The file is for `status`, which counts from the attempt's start until the file is
        # newer: its first write is due half a second in, then at most every half second.
        last = [self.clock()]

        def beat() -> None:
            now = self.clock()
            r = self._running.get(tid)
            if r is not None:
                r.last_life = now
            if now - last[0] >= 0.5:
                last[0] = now
                with contextlib.suppress(OSError):
                    touch(path)

        return beat

    def _call_recorder(self, tid: str, n: int) -> Callable[[dict[str, Any]], Any]:
        async def record(call: dict[str, Any]) -> None:
            # Durable before the response is used: a resume reuses it instead of paying again.
            self.emit({"type": "llm_call", "task": tid, "attempt": n, **call})
            await self._group_commit()
            over = self._over_budget()
            if over and not self._budget_stop:
                self._budget_stop = over  # stop dispatching; running tasks may end

        return record

    async def _group_commit(self) -> None:
        """Commit what running attempts staged. Callers that arrive while a commit is pending
        share its fsync (group commit); each returns only once its record is durable."""
        pending = self._group
        if pending is not None:
            await asyncio.shield(pending)
            return
        pending = self._group = asyncio.get_running_loop().create_future()
        try:
            await asyncio.sleep(0)  # let the other attempts that are ready stage theirs
        finally:
            self._group = None  # a record staged from now on needs a commit of its own
            try:
                self.commit()
            except BaseException as e:
                pending.set_exception(e)
                pending.exception()  # retrieved: the callers that wait get it too
                raise
            pending.set_result(None)

    def _has_expression(self, spec: StepSpec) -> bool:
        key = id(spec)  # specs live as long as the definition this scheduler holds
        if key not in self._expressions:
            text = json.dumps([spec.with_, spec.command, spec.env,
                               self.defn.pipeline.defaults.env], default=str)
            self._expressions[key] = "${{" in text
        return self._expressions[key]

    def _runner(self, name: str) -> object | None:
        try:
            return self.registry.get(name)
        except Exception:  # unknown, or failing to load: _execute reports it
            return None

    async def _execute(self, runner_name: str, ctx: Attempt,
                       prepare: Callable[[], None] | None = None) -> Outcome:
        try:
            runner = self.registry.get(runner_name)
        except KeyError:
            return Outcome(category="crashed", message=f"no runner named '{runner_name}' "
                           f"(known: {', '.join(self.registry.names())})")
        if prepare is not None:
            # Here, as the attempt begins, rather than for every start of a pass before any
            # begins: the first agent runs while the next one's files are made (measured:
            # 15% less wall on 1,000 short command tasks).
            try:
                prepare()
            except OSError as e:
                return Outcome(category="crashed", message=f"cannot prepare the attempt: {e}")
        try:
            return await runner.run(ctx)
        except RunnerError as e:
            return Outcome(category=e.category, message=e.message, retryable=e.retryable)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a runner's bug must not take the driver down
            return Outcome(category="crashed", message=f"runner '{runner_name}' raised "
                           f"{type(e).__name__}: {e}", retryable=True)

    # ------------------------------------------------------------------ watching

    def _watch(self) -> None:
        now = self.clock()
        for r in self._running.values():
            if r.kill_reason or r.future.done():
                continue
            if now >= r.deadline:
                r.kill_reason = "timeout"
                r.kill_message = f"timed out after {self.defn.timeout_for(self._spec(r.task_id)):g}s"
                r.future.cancel()
                continue
            if r.heartbeat_s:
                try:
                    st = os.stat(self.run.heartbeat_file(r.task_id))
                    sig = (st.st_mtime_ns, st.st_size)
                except FileNotFoundError:
                    sig = None
                if sig != r.beat_sig:
                    # Any change counts as life; its time is read off our own clock.
                    r.beat_sig = sig
                    r.last_life = now
                elif now - r.last_life > 3 * r.heartbeat_s:
                    r.kill_reason = "stale"
                    r.kill_message = (f"no heartbeat for {now - r.last_life:.1f}s "
                                      f"(3 missed beats of {r.heartbeat_s:g}s)")
                    r.future.cancel()

    # ------------------------------------------------------------------ finishing

    def _finish(self, r: _Running) -> None:
        if not r.future.done():
            return
        del self._running[r.task_id]
        t = self.state.tasks[r.task_id]
        duration = round(self.clock() - r.started, 3)
        if r.superseded:
            self.emit({"type": "attempt_ended", "task": t.id, "attempt": r.attempt,
                       "outcome": "abandoned", "category": "cancelled", "message": r.kill_message,
                       "superseded": True, "duration_s": duration})
            self._outputs.append(t.id)
            return
        if r.future.cancelled():
            outcome = Outcome(category=r.kill_reason or "cancelled",
                              message=r.kill_message or "stopped", retryable=r.kill_reason in ("timeout", "stale"))
        else:
            outcome = r.future.result()
        base: dict[str, Any] = {"type": "attempt_ended", "task": t.id, "attempt": r.attempt,
                                "tokens": outcome.tokens, "cost_usd": outcome.cost_usd,
                                "duration_s": duration}
        if outcome.details:
            base["details"] = outcome.details
        if outcome.report is not None and outcome.category is None:
            spec = self._spec(t.id)
            skill = self.defn.skills.get(spec.skill) if spec.skill else None
            report: dict[str, Any] | None = outcome.report
            problems: list[str] = []
            if not outcome.validated:  # else the runner did, against this same schema
                report, problems = validate_report(outcome.report, skill.output_schema if skill else None)
            if report is None:
                outcome = Outcome(category="invalid_output", retryable=True,
                                  message="the report does not validate: " + "; ".join(problems))
            elif report["status"] == "COMPLETE":
                self.emit({**base, "outcome": "complete", "report": report})
                self._outputs.append(t.id)
                return
            elif report["status"] == "BLOCKED":
                blockers = "; ".join(report["blockers"]) or report["summary"]
                self.emit({**base, "outcome": "blocked", "report": report, "category": "blocked",
                           "message": f"the agent is blocked: {blockers}", "retry": False})
                self._skip_dependents(t.id)
                return
            else:
                outcome = Outcome(category="command_failed", retryable=False,
                                  message=f"the agent reported FAILED: {report['summary']}")
                base["report"] = report
        failures = t.failures + 1  # with this one (the record below counts it)
        retry = outcome.retryable and failures <= self.defn.retries_for(self._spec(t.id))
        self.emit({**base, "outcome": "failed", "category": outcome.category,
                   "message": outcome.message, "retry": retry})
        if retry:
            self._backoff[t.id] = self.clock() + self._backoff_delay(failures)
        else:
            self._skip_dependents(t.id)

    def _backoff_delay(self, failures: int) -> float:
        first: float = self.defn.pipeline.defaults.backoff
        base: float = min(self.opt.backoff_cap_s, first * 2.0 ** (failures - 1))
        return base * (0.5 + self.rng.random() / 2)  # jitter: 50-100% of the step

    # ------------------------------------------------------------------ stopping

    async def _stop_all(self) -> None:
        """Stop every running attempt (their process groups) and log what resume must do."""
        for r in self._running.values():
            if not r.future.done():
                r.kill_reason = r.kill_reason or "cancelled"
                r.future.cancel()
        if self._running:
            await asyncio.wait([r.future for r in self._running.values()], timeout=30)
        for r in list(self._running.values()):
            del self._running[r.task_id]
            t = self.state.tasks[r.task_id]
            self.abandon(t, f"stopped: run {self._interrupt}", category="cancelled")
        if self._interrupt == "cancelled":
            review = {r["task"] for r in self._batch if r["type"] == "task_needs_review"}
            for t in self.state.tasks.values():
                if not t.settled and t.id not in review and t.status != TaskStatus.NEEDS_REVIEW.value:
                    self.emit({"type": "task_cancelled", "task": t.id, "reason": "the run was cancelled"})
        self.commit()

    def abandon(self, t: TaskState, why: str, *, category: str = "crashed") -> None:
        """An attempt that did not end on its own: decide by the task's effects what resume
        does (section 6.2 of the design): run again, same idempotency key, or a person."""
        effects = Effects(t.effects)
        if effects is Effects.IRREVERSIBLE:
            self.emit({"type": "attempt_ended", "task": t.id, "attempt": t.attempt,
                       "outcome": "abandoned", "category": category, "message": why,
                       "retry": True, "counts": False})
            self.emit({"type": "task_needs_review", "task": t.id,
                       "reason": f"irreversible task was in flight ({why}); a person must check "
                                 "whether it took effect"})
        else:
            self.emit({"type": "attempt_ended", "task": t.id, "attempt": t.attempt,
                       "outcome": "abandoned", "category": category, "message": why,
                       "retry": True, "counts": False})

    def _final_status(self) -> str:
        tasks = list(self.state.tasks.values())
        statuses = [t.status for t in tasks]
        if self._budget_stop and any(s == TaskStatus.PENDING.value for s in statuses):
            return "budget_exceeded"
        if any(s in PARKED for s in statuses):
            return "paused"
        # A task skipped by its own false condition (no error) is not a failure.
        if any(t.status != TaskStatus.COMPLETE.value
               and not (t.status == TaskStatus.SKIPPED.value and t.error is None) for t in tasks):
            return "failed"
        return "complete"

    def _end(self, status: str, reason: str | None = None) -> str:
        rec: dict[str, Any] = {"type": "run_ended", "status": status}
        if reason:
            rec["reason"] = reason
        self.emit(rec)
        self.commit()
        self.reporter.tick(self.state)
        self.snapshot(force=True)
        return status

    def _beat_driver(self) -> None:
        now = self.clock()
        if now - self._last_beat >= self.opt.driver_beat_s:
            self._last_beat = now
            with contextlib.suppress(OSError):
                os.utime(self.run.driver_file)


def _as_template(value: str) -> str:
    return value.strip() if "${{" in value else "${{ " + value + " }}"


def _safe_suffix(raw: str) -> str:
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_-") else "-" for ch in raw.strip())
    return out.strip("-")[:64]


def _join_report(tid: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """A fan-out group's report: every instance's report, in order, as its output."""
    deliverables = [d for r in reports for d in r.get("deliverables", [])]
    return {"status": "COMPLETE", "summary": f"{tid}: {len(reports)} instance(s) complete",
            "deliverables": deliverables, "blockers": [], "next": None, "output": reports}


def _same_work(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    import json

    def key(r: dict[str, Any] | None) -> str:
        r = r or {}
        return json.dumps(r.get("output") if r.get("output") is not None else r.get("summary"),
                          sort_keys=True)

    return key(a) == key(b)


def _compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _file_warning(e: OSError) -> None:
    """output.json is a convenience: failing to write one (a full disk) must not stop the
    run, whose truth is the WAL. Say so on stderr, once per kind of error."""
    if e.errno not in _FILE_ERRORS:
        _FILE_ERRORS.add(e.errno)
        sys.stderr.write(f"agentctl: warning: cannot write {e.filename or 'a file'}: "
                         f"{e.strerror or e} (the WAL has it; `agentctl resume` writes it "
                         "again)\n")


_FILE_ERRORS: set[int | None] = set()


async def _fail(category: str, message: str) -> Outcome:
    return Outcome(category=category, message=message, retryable=False)
