"""Starting and resuming runs: the glue between definitions, the store and the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import hashlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentctl import store
from agentctl.definitions import Definition, find_skill_file, find_skills_dir, load_pipeline
from agentctl.errors import DefinitionError, Diagnostic, StateError, UsageError
from agentctl.planning import wave_of
from agentctl.runners.base import Registry
from agentctl.scheduler import Options, Reporter, Scheduler, needs_approval
from agentctl.state import RunState, replay

FROZEN_PIPELINE = "pipeline.yaml"


@dataclass
class Outcome:
    run_id: str
    status: str
    notes: list[str] = field(default_factory=list)


def resolve_inputs(defn: Definition, given: dict[str, str]) -> dict[str, Any]:
    declared = defn.pipeline.inputs
    unknown = [k for k in given if k not in declared]
    if unknown:
        names = ", ".join(sorted(declared)) or "none"
        raise UsageError(f"unknown input '{unknown[0]}' (this pipeline's inputs: {names})")
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            out[name] = given[name]
        elif spec.default is not None and spec.required is not True:
            out[name] = spec.default
        elif spec.required is False:
            out[name] = ""  # optional with no default: empty, never the text "null"
        else:
            raise UsageError(f"input '{name}' is required (it has no default): pass "
                             f"-i {name}=VALUE")
    return out


def freeze(defn: Definition, dest: Path) -> None:
    """Copy the pipeline and each skill it uses (SKILL.md and assets/) into ``dest``."""
    store.write_atomic(dest / FROZEN_PIPELINE, defn.path.read_bytes(), durable=False)
    for name, skill in defn.skills.items():
        if skill.path.name == "SKILL.md":
            target = dest / "skills" / name
            store.makedirs(target)
            shutil.copyfile(skill.path, target / "SKILL.md")
            assets = skill.path.parent / "assets"
            if assets.is_dir():
                shutil.copytree(assets, target / "assets", dirs_exist_ok=True)
        else:
            store.makedirs(dest / "skills")
            shutil.copyfile(skill.path, dest / "skills" / f"{name}.md")
    for path in store.iter_files(dest):
        os.chmod(path, 0o600)
    for dirpath, _dirs, _files in os.walk(dest):
        os.chmod(dirpath, 0o700)


def load_frozen(run: store.RunDir) -> Definition:
    return load_pipeline(run.definition / FROZEN_PIPELINE, skills_dir=run.definition / "skills")


def changed_on_disk(frozen: Definition, original: str | None) -> list[str]:
    """What differs between the frozen copy and the files the run was started from."""
    if not original:
        return []
    path = Path(original)
    if not path.is_file():
        return [f"{original} no longer exists"]
    out = []
    if hashlib.sha256(path.read_bytes()).hexdigest() != frozen.sha256:
        out.append(f"{original} has changed")
    sdir = find_skills_dir(path, None)
    for name, skill in frozen.skills.items():
        f = find_skill_file(sdir, name)
        if f is None:
            out.append(f"skill '{name}' is gone from {sdir}")
        elif hashlib.sha256(f.read_bytes()).hexdigest() != skill.sha256:
            out.append(f"{f} has changed")
    return out


def check_runners(defn: Definition, registry: Registry) -> None:
    known = set(registry.names())
    diags = []
    for tid, role, step in defn.steps():
        name = defn.runner_for(step)
        if name not in known:
            where = f"tasks.{tid}" + (f".loop.{role}" if role else "")
            diags.append(Diagnostic(str(defn.path), None, None,
                                    f"{where}: no runner named '{name}' (known: {', '.join(sorted(known))})"))
    if diags:
        raise DefinitionError(diags)


def start(pipeline_path: Path, state_dir: store.StateDir, *, inputs: dict[str, str],
          run_id: str | None, model: str | None, concurrency: int | None,
          registry: Registry, reporter: Reporter | None, options: Options | None = None,
          preflight: Any = None) -> Outcome:
    defn = load_pipeline(pipeline_path)
    check_runners(defn, registry)
    values = resolve_inputs(defn, inputs)
    if preflight is not None:
        preflight(defn, model)
    rid = run_id or state_dir.new_run_id(defn.pipeline.name)
    if run_id is not None:
        _check_run_id(run_id)
    staged = state_dir.stage_run(rid)
    lock = store.RunLock(staged)
    lock.acquire()  # held across the rename: flock belongs to the file, not its name
    try:
        freeze(defn, staged.definition)
        run = staged
        store.write_json_atomic(run.driver_file, store.driver_identity("run"))
        journal = store.Journal(run, next_seq=1)
        graph = {t: s.needs for t, s in defn.pipeline.tasks.items()}
        waves = wave_of(graph)
        opts = options or Options()
        opts.concurrency = concurrency or opts.concurrency or defn.pipeline.limits.concurrency
        if concurrency is None and options is None:
            opts.concurrency = defn.pipeline.limits.concurrency
        opts.model_override = model
        tasks = [{"id": t, "wave": waves[t], "needs": s.needs, "effects": defn.effects_of(t).value,
                  "runner": defn.runner_of(t), "skill": s.skill,
                  "heartbeat": defn.heartbeat_of(t)}
                 for t, s in defn.pipeline.tasks.items()]
        first = [
            {"type": "run_started", "run_id": rid, "pipeline": defn.pipeline.name,
             "workspace": os.getcwd(), "inputs": values, "tasks": tasks,
             "definition_sha": defn.sha256,
             "options": {"pipeline_path": str(pipeline_path.resolve()), "model": model,
                         "concurrency": opts.concurrency}},
            {"type": "driver_started", **store.driver_identity("run")},
        ]
        journal.append(first)  # each record becomes what was written (numbered, masked)
        run = state_dir.publish(staged, rid)
        journal.run = run
        # The state from the records as written, not read back: run_started lists every
        # task with its needs (900 KB for 1,000 tasks in 10 waves of 100), 20 ms to scan.
        state = replay(first)
        status = _drive(run, journal, defn, state, registry, reporter, opts)
        return Outcome(rid, status, waiting_notes(state))
    finally:
        lock.release()


def _check_run_id(run_id: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", run_id) or ".." in run_id:
        raise UsageError(f"--run-id '{run_id}' must be letters, digits, '.', '_' and '-'")


def _drive(run: store.RunDir, journal: store.Journal, defn: Definition, state: RunState,
           registry: Registry, reporter: Reporter | None, opts: Options) -> str:
    sched = Scheduler(run, journal, defn, state, registry, reporter, opts)
    # What exists now (modules, the definition, the state's tasks) lives as long as the run:
    # out of the collector's sight, a full collection during the run walks only what the
    # run made (one walked all of it: ~13 ms for 1,000 tasks, once or more a run).
    gc.freeze()
    try:
        return asyncio.run(sched.drive())
    finally:
        gc.unfreeze()  # a caller that lives on (tests) collects as before
        _write_stats(journal)
        journal.close()


def _write_stats(journal: store.Journal) -> None:
    """``AGENTCTL_STATS_FILE=PATH``: when the run ends, write the driver's counters there as
    JSON (WAL fsyncs, i.e. group-commit batches; records; the driver's own peak RSS in KiB and
    CPU seconds, without its children's, such as the model host's). For
    ``benchmarks/bench_engine.py``; not part of the run's state."""
    path = os.environ.get("AGENTCTL_STATS_FILE")
    if path:
        import json
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        peak = me.ru_maxrss  # on Linux this keeps the forked parent's peak across exec: VmHWM
        with contextlib.suppress(OSError, ValueError, IndexError):
            status = Path("/proc/self/status").read_text()
            peak = int(status.split("VmHWM:", 1)[1].split()[0])
        Path(path).write_text(json.dumps({"wal_fsyncs": journal.fsyncs, "wal_records": journal.seq,
                                          "peak_rss_kb": peak,
                                          "cpu_self_s": me.ru_utime + me.ru_stime}) + "\n")


def resume(state_dir: store.StateDir, run_id: str | None, *, registry: Registry,
           reporter: Reporter | None, retry_failed: bool = False,
           options: Options | None = None, concurrency: int | None = None,
           budget: dict[str, Any] | None = None) -> Outcome:
    run = state_dir.run(run_id) if run_id else state_dir.newest()
    lock = store.RunLock(run)
    lock.acquire()
    try:
        # Name ourselves at once: a driver that loses the race for the lock reads this file
        # to say who holds the run, and must not name the dead driver we are replacing.
        store.write_json_atomic(run.driver_file, store.driver_identity("resume"))
        scan = store.cut_torn_tail(run.wal)
        notes: list[str] = []
        if scan.torn_bytes:
            notes.append(f"cut a torn record ({scan.torn_bytes} bytes) off the end of the log")
        if not scan.records or scan.records[0].get("type") != "run_started":
            raise StateError(f"{run.wal}: the log does not start with a run_started record")
        removed = store.clean_temp_files(run.path)
        if removed:
            notes.append(f"removed {removed} temp file(s) left by a crash")
        state = replay(scan.records)
        try:
            defn = load_frozen(run)
        except DefinitionError as e:
            raise StateError(f"the frozen definition in {run.definition} cannot be loaded: "
                             f"{e.diagnostics[0]}") from None
        changes = changed_on_disk(defn, state.options.get("pipeline_path"))
        if changes:
            notes.append("definitions changed on disk since the run started ("
                         + "; ".join(changes) + "); resume uses the frozen copy in "
                         + str(run.definition))
        if state.status == "complete" and not retry_failed:
            return Outcome(run.run_id, "complete", [*notes, "the run is already complete"])
        if (state.status == "cancelled" and not retry_failed
                and not any(t.status == "pending" for t in state.tasks.values())):
            # A person stopped it (and queued nothing since): resume would relabel it 'failed'.
            return Outcome(run.run_id, "cancelled", [*notes, (
                f"run {run.run_id} was cancelled; `agentctl resume {run.run_id} --retry-failed` "
                "runs its cancelled tasks again")])
        _regenerate_outputs(run, state)
        killed = _kill_orphans(run)
        if killed:
            notes.append(f"stopped {killed} agent process group(s) left by the previous driver")
        journal = store.Journal(run, next_seq=state.seq + 1)
        opts = options or Options()
        opts.concurrency = concurrency or int(state.options.get("concurrency") or defn.pipeline.limits.concurrency)
        opts.model_override = state.options.get("model")
        sched = Scheduler(run, journal, defn, state, registry, reporter, opts)
        sched.emit({"type": "driver_started", **store.driver_identity("resume")})
        if budget:
            sched.emit({"type": "run_options", "options": budget})
        for t in state.in_flight():
            sched.abandon(t, "the driver stopped during this attempt")
        if retry_failed:
            for t in state.tasks.values():
                if t.status in ("failed", "skipped", "blocked", "cancelled"):
                    sched.emit({"type": "task_reset", "task": t.id})
        sched.commit()
        try:
            status = asyncio.run(sched.drive())
        finally:
            journal.close()
        return Outcome(run.run_id, status, notes + waiting_notes(state))
    finally:
        lock.release()


def waiting_notes(state: RunState) -> list[str]:
    """What a person must do for a paused run, one line per task."""
    out = []
    if state.status == "budget_exceeded":
        out.append(f"{state.reason or 'the budget is spent'}; to go on, raise it: agentctl "
                   f"resume {state.run_id} --budget-usd X (or --budget-tokens N)")
    for t in state.tasks.values():
        if t.status == "waiting_approval":
            out.append(f"task '{t.id}' waits for approval: agentctl approve {state.run_id} {t.id}"
                       f" (or agentctl reject {state.run_id} {t.id} --reason ...)")
        elif t.status == "needs_review":
            out.append(f"task '{t.id}' needs review ({t.reason}): agentctl complete "
                       f"{state.run_id} {t.id} --output report.json, or agentctl retry "
                       f"{state.run_id} {t.id}")
    return out


def _kill_run_processes(run: store.RunDir) -> set[int]:
    """Every agent process group of this run still alive: orphans of a dead driver (called
    with the run's lock held, so no live driver owns them). Found by their environment, so no
    pid file is needed (none is written): AGENTCTL_INPUT is a path inside this run's
    directory (run ids alone repeat across state directories). Both sides are resolved, so
    an agent started through a symlink or another spelling of the state directory is found.
    A group whose leader is gone is still stopped, through any member left in it."""
    root = os.path.realpath(run.path) + os.sep
    key = b"AGENTCTL_INPUT="
    me, my_group = os.getpid(), os.getpgid(0)
    killed: set[int] = set()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return killed
    for pid in pids:
        if pid == me:
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            value = next((v[len(key):] for v in env if v.startswith(key)), None)
            if value is None or not os.path.realpath(os.fsdecode(value)).startswith(root):
                continue
            group = os.getpgid(pid)
            if group in killed or group == my_group:
                continue
            os.killpg(group, signal.SIGKILL)
            killed.add(group)
        except (OSError, ProcessLookupError):
            continue
    return killed


def _regenerate_outputs(run: store.RunDir, state: RunState) -> None:
    """output.json is derived from the WAL; after a power loss it may be missing."""
    for t in state.tasks.values():
        tdir = run.task_dir(t.id)
        if t.status == "complete" and t.report is not None and not (tdir / "output.json").exists():
            store.write_output(tdir, t.report)


def _kill_orphans(run: store.RunDir) -> int:
    """Agents of in-flight attempts may outlive a SIGKILLed driver (they lead their own
    process groups). Stop every agent of this run that /proc shows still running (no live
    driver owns any of them); the count is of process groups, each once."""
    return len(_kill_run_processes(run))


def request(state_dir: store.StateDir, run_id: str | None, req: dict[str, Any]) -> str:
    """Carry out a person's request (approve, reject, complete, retry, cancel) on a run.

    With a live driver the request goes through ``control/`` and the driver logs it; with
    none we hold the lock and log it ourselves. Returns the message for the person."""
    from agentctl import control
    from agentctl.errors import LockHeld

    # The person is whoever runs this command, not whoever runs the driver that logs it.
    req = {**req, "user": req.get("user") or control.user()}
    run = state_dir.run(run_id) if run_id else state_dir.newest()
    lock = store.RunLock(run)
    try:
        lock.acquire()
    except LockHeld:
        answer = control.submit(run, req, lock=lock)
        if answer is None:
            raise StateError(f"the driver of run '{run.run_id}' did not answer within 10s; "
                             "the request stays queued in control/ and is applied when it "
                             "next reads it (or by `agentctl resume`)") from None
        if not answer.get("withdrawn"):
            if not answer.get("ok"):
                raise UsageError(str(answer.get("message"))) from None
            return str(answer.get("message"))
        # The driver ended without reading the request; we hold the lock: carry it out here.
    try:
        scan = store.cut_torn_tail(run.wal)
        state = replay(scan.records)
        defn = load_frozen(run)
        schemas = {}  # a person's report is validated like the agent's: instances too
        for t in state.tasks.values():
            owner = t.parent or t.id
            if owner in defn.pipeline.tasks:
                step = defn.step(owner, t.role if t.role in ("maker", "checker") else None)
                if step.skill in defn.skills:
                    schemas[t.id] = defn.skills[step.skill].output_schema
        gated = {t.id for t in state.tasks.values() if needs_approval(defn, t)}
        records, message = control.decide(state, req, schemas, driver_alive=False, gated=gated)
        in_flight = {t.id: t for t in state.in_flight()}
        taken = in_flight.get(req.get("task") or "")
        if req.get("action") in ("complete", "retry") and taken is not None:
            # Its agent may outlive the crashed driver: stop it before a person's report
            # stands or a new attempt starts, and close its attempt in the log.
            _kill_orphans(run)
            records.insert(0, {"type": "attempt_ended", "task": taken.id, "attempt": taken.attempt,
                               "outcome": "abandoned", "category": "crashed",
                               "message": "the driver stopped during this attempt",
                               "retry": True, "counts": False})
        if req.get("action") == "cancel":
            _kill_orphans(run)
            for t in state.tasks.values():
                if t.status == "running" and t.group is None:  # a group has no attempt
                    records.append({"type": "attempt_ended", "task": t.id, "attempt": t.attempt,
                                    "outcome": "abandoned", "category": "cancelled",
                                    "message": "the run was cancelled", "retry": True,
                                    "counts": False})
                if not t.settled:
                    records.append({"type": "task_cancelled", "task": t.id,
                                    "reason": "the run was cancelled"})
            records.append({"type": "run_ended", "status": "cancelled", "reason": "cancelled by a person"})
        # Every command replays the log: try our records on a copy before they are durable,
        # so that a bug here fails this command only, not every later one.
        replay([*scan.records, *copy.deepcopy(records)])
        journal = store.Journal(run, next_seq=state.seq + 1)
        try:
            journal.append(records)
            for rec in records:
                from agentctl.state import apply

                apply(state, rec)
                if rec["type"] == "task_taken_over":
                    store.write_output(run.task_dir(rec["task"]), rec["report"])
            data = state.to_dict()
            data["wal_seq"] = journal.seq
            data["wal_offset"] = journal.offset()
            store.write_json_atomic(run.snapshot, data, durable=True)
        finally:
            journal.close()
        if req.get("action") != "cancel" and state.status != "complete":
            message += f"; continue with `agentctl resume {run.run_id}`"
        return message
    finally:
        lock.release()
