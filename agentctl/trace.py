"""``agentctl trace``: from a failed run to the cause in one command.

For each failing task (failed, blocked, cancelled, needs review) and the root cause of each
skipped one, it gathers what identifies the failure exactly: the model, the content hash of
the frozen skill file the run used, the hash of the prompt the agent was sent, the failure
category, the exact error text, and where to look next. Read-only, no lock, no litellm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agentctl import store
from agentctl.logs import (
    RunLog,
    attempt_calls,
    clean,
    clock,
    load_json,
    money,
    resolve_run,
    unknown_task,
)

FAILING = ("failed", "blocked", "cancelled", "needs_review", "stale")


@dataclass
class Trace:
    task: str
    status: str
    category: str | None
    message: str | None
    wave: int | None
    runner: str | None
    attempts: int
    model: str | None = None
    skill: str | None = None
    skill_file: str | None = None
    skill_sha256: str | None = None
    prompt_file: str | None = None  # the file that holds it
    prompt_source: str | None = None  # what in that file: "prompt.md", "messages 1-2"
    prompt_sha256: str | None = None
    prompt_bytes: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)  # llm calls of the attempt
    attempt_files: list[str] = field(default_factory=list)  # the last attempt's, as paths
    ended_at: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    earlier: list[str] = field(default_factory=list)  # one line per earlier attempt
    caused_skips: list[str] = field(default_factory=list)
    asked_for: str | None = None  # the skipped task the user named, when this is its cause


def sha256_file(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _prompt_identity(files: dict[str, Path]) -> tuple[str, int, Path, str] | None:
    """(sha256, bytes, file, what in it) of the prompt an attempt was sent: its prompt.md
    (a process agent's), else the messages the llm runner first sent, from exchange.json
    (as compact JSON, keys sorted: the same conversation always gives the same hash)."""
    if "prompt.md" in files:
        digest = sha256_file(files["prompt.md"])
        if digest is not None:
            with contextlib.suppress(OSError):
                return digest, files["prompt.md"].stat().st_size, files["prompt.md"], "prompt.md"
    exchange = load_json(files["exchange.json"]) if "exchange.json" in files else None
    messages = exchange.get("messages") if isinstance(exchange, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    first = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant":
            break
        first.append(m)
    data = json.dumps(first, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    what = f"messages 1-{len(first)}" if len(first) > 1 else "message 1"
    return hashlib.sha256(data).hexdigest(), len(data), files["exchange.json"], what


def root_causes(log: RunLog, tid: str, seen: set[str] | None = None) -> list[str]:
    """The tasks, not themselves skipped, whose failure made ``tid`` skipped; ``[tid]`` if
    it was skipped for a reason of its own."""
    seen = set() if seen is None else seen
    seen.add(tid)
    tasks = log.state.tasks
    t = tasks.get(tid)
    if t is not None and t.children and t.status in FAILING:
        # A fan-out or loop that failed because of its children: they are the cause.
        bad = [c for c in t.children if c in tasks and tasks[c].status not in ("complete", "skipped")]
        out = []
        for c in bad:
            out += [r for r in root_causes(log, c, seen) if r not in out]
        return out or [tid]
    if t is None or t.status != "skipped":
        return [tid]
    out = []
    for n in t.needs:
        need = tasks.get(n)
        if need is None or need.status == "complete" or n in seen:
            continue
        for r in root_causes(log, n, seen) if need.status == "skipped" else [n]:
            if r not in out:
                out.append(r)
    return out or [tid]


def failing(log: RunLog) -> list[str]:
    """Every task that failed on its own, in run order, then skipped tasks' causes."""
    tasks = log.state.tasks
    out = [tid for tid, t in tasks.items() if t.status in FAILING]
    for tid, t in tasks.items():
        if t.status == "skipped":
            out += [r for r in root_causes(log, tid) if r not in out]
    return out


def trace_task(log: RunLog, tid: str) -> Trace:
    spec = log.info(tid)
    t = log.state.tasks.get(tid)
    err = (t.error if t else None) or {}
    tr = Trace(task=tid, status=t.status if t else "unknown", category=err.get("category"),
               message=err.get("message") or (t.reason if t else None),
               wave=spec.get("wave"), runner=spec.get("runner"), attempts=t.attempt if t else 0)
    tr.skill = spec.get("skill")
    skill_path = log.skill_file(tr.skill)
    if skill_path is not None:
        tr.skill_file = str(skill_path)
        tr.skill_sha256 = sha256_file(skill_path)
    attempts = log.attempts(tid)
    if attempts:
        last = attempts[-1]
        tr.model = last.model
        files = log.run.attempt_files(tid, last.n)
        tr.attempt_files = [str(p) for n, p in files.items() if n != "pid"]
        prompt_id = _prompt_identity(files)
        if prompt_id is not None:
            tr.prompt_sha256, tr.prompt_bytes, path, tr.prompt_source = prompt_id
            tr.prompt_file = str(path)
        # The llm runner's exchange.json (or an older run's call files) also holds the
        # calls that failed and the responses reused (no WAL record); the WAL, the
        # responses paid after exchange.json was last written (a driver killed meanwhile).
        calls = attempt_calls(files, last)
        for c in calls.calls + calls.wal_only:
            r = {k: c.get(k) for k in ("request_hash", "model", "tokens", "cost_usd", "latency_s")
                 if c.get(k) is not None}
            if isinstance(c.get("error"), dict):
                r["error"] = c["error"].get("kind")
            if c.get("cached"):
                r["cached"] = True
            tr.requests.append(r)
        ended = last.ended or {}
        tr.ended_at = ended.get("at")
        if isinstance(ended.get("duration_s"), int | float):
            tr.duration_s = float(ended["duration_s"])
        details = ended.get("details")
        if isinstance(details, dict) and isinstance(details.get("exit_code"), int):
            tr.exit_code = details["exit_code"]
        for a in attempts[:-1]:
            e = a.ended or {}
            what = f"[{e.get('category')}] {e.get('message') or ''}" if e.get("category") else str(e.get("outcome", "no end recorded"))
            tr.earlier.append(f"attempt {a.n}: {what}".rstrip())
    tr.caused_skips = [s for s, st in log.state.tasks.items()
                       if st.status == "skipped" and s != tid and tid in root_causes(log, s)]
    return tr


def collect(log: RunLog, task: str | None) -> list[Trace]:
    if task is None:
        return [trace_task(log, tid) for tid in failing(log)]
    if not log.has_task(task):
        raise unknown_task(log.run.run_id, task, log.task_ids())
    out = [trace_task(log, task)]
    queue, seen = [task], {task}
    while queue:  # a skip's cause may be a group, whose causes are its children
        for cause in root_causes(log, queue.pop(0)):
            if cause not in seen:
                seen.add(cause)
                queue.append(cause)
                tr = trace_task(log, cause)
                tr.asked_for = task
                out.append(tr)
    return out


# --------------------------------------------------------------------------- text


def _indent(text: str, pad: str) -> str:
    return text.replace("\n", "\n" + pad)


def render(log: RunLog, traces: list[Trace], status: str | None = None) -> str:
    st = log.state
    done = st.count("complete")
    lines = [f"run {st.run_id} ({st.pipeline}) {status or st.status} · {done}/{len(st.tasks)} complete · "
             f"{st.tokens} tokens · {money(st.cost_usd)}"]
    if st.definition_sha:
        lines.append(f"pipeline sha256:{st.definition_sha}  ({log.run.definition / 'pipeline.yaml'})")
    if not traces:
        lines.append("nothing failed: no failed, blocked, cancelled or skipped tasks")
        return "\n".join(lines) + "\n"
    pad = " " * 11
    for tr in traces:
        lines.append("")
        mark = "✓" if tr.status == "complete" else "✗" if tr.category or tr.status in FAILING else "·"
        head = f"{mark} {clean(tr.task)}  {tr.status}"
        if tr.category:
            head += f" · {clean(tr.category)}"
        if tr.asked_for:
            head += f"   (why '{clean(tr.asked_for)}' was skipped)"
        lines.append(head)
        if tr.message or tr.category:
            lines.append(f"  error    {_indent(clean(tr.message or '(no message recorded)'), pad)}")
        causes = [c for c in root_causes(log, tr.task) if c != tr.task]
        if causes and not tr.attempts:
            group = log.state.tasks[tr.task].group if tr.task in log.state.tasks else None
            if group:
                kids = log.state.tasks[tr.task].children
                lines.append(f"  group    {group} of {len(kids)}: {', '.join(clean(k) for k in kids[:20])}"
                             + (" …" if len(kids) > 20 else ""))
            listed = {t.task for t in traces}
            lines.append(f"  cause    {', '.join(clean(c) for c in causes)}"
                         + (" (below)" if all(c in listed for c in causes) else ""))
            if tr.caused_skips:
                lines.append(f"  skipped  {', '.join(clean(s) for s in tr.caused_skips)}")
            continue
        where = f"wave {tr.wave}, runner {tr.runner}"
        if tr.attempts:
            att = f"  attempt  {tr.attempts} ({where})"
            if tr.ended_at:
                att += f", ended {clock(tr.ended_at)}"
            if tr.duration_s is not None:
                att += f" after {tr.duration_s:.2f}s"
            if tr.exit_code is not None:
                att += f", exit code {tr.exit_code}"
            lines.append(att)
        else:
            lines.append(f"  attempt  none: the task never ran ({where})")
        if tr.model:
            lines.append(f"  model    {clean(tr.model)}")
        else:
            lines.append("  model    none" + (" (a command task)" if tr.runner == "command" else ""))
        if tr.skill:
            if tr.skill_sha256:
                lines.append(f"  skill    {clean(tr.skill)} sha256:{tr.skill_sha256}")
                lines.append(f"{pad}{tr.skill_file}")
            else:
                lines.append(f"  skill    {clean(tr.skill)} (no frozen copy in {log.run.definition})")
        else:
            lines.append("  skill    none")
        if tr.prompt_sha256:
            lines.append(f"  prompt   sha256:{tr.prompt_sha256} ({tr.prompt_bytes} bytes)")
            lines.append(f"{pad}{tr.prompt_file}"
                         + ("" if tr.prompt_source == "prompt.md" else f" ({tr.prompt_source})"))
        elif not tr.skill:
            lines.append("  prompt   none (no skill: no prompt was rendered)")
        elif tr.attempts and tr.runner == "llm":
            # an llm attempt with no exchange.json: it ended before its conversation began,
            # or its driver stopped before the file's first write
            lines.append("  prompt   none on disk (exchange.json is written when the attempt "
                         "ends, before a further call, or once a call has been out 0.25 s; "
                         "this attempt left none)")
        else:
            lines.append("  prompt   none (the task never got one)")
        for i, r in enumerate(tr.requests, 1):
            bits = [f"request {clean(str(r.get('request_hash', '?')))}"]
            if r.get("model"):
                bits.append(clean(str(r["model"])))
            if r.get("tokens"):
                bits.append(f"{r['tokens']} tokens")
            if r.get("latency_s") is not None:
                bits.append(f"{float(r['latency_s']):.2f}s")
            if r.get("cached"):
                bits.append("reused (paid by an earlier attempt)")
            if r.get("error"):
                bits.append(f"error: {clean(str(r['error']))}")
            lines.append(f"  call {i:<3} " + " · ".join(bits))
        for e in tr.earlier:
            lines.append(f"  before   {_indent(clean(e), pad)}")
        if tr.caused_skips:
            lines.append(f"  skipped  {', '.join(clean(s) for s in tr.caused_skips)}")
        if tr.attempt_files:
            lines.append(f"  look at  {tr.attempt_files[0]}")
            lines.extend(f"{pad}{f}" for f in tr.attempt_files[1:])
            lines.append(f"{pad}agentctl logs {log.run.run_id} {tr.task}")
        else:
            lines.append(f"  look at  agentctl logs {log.run.run_id} {tr.task}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the command


def command(state_dir: store.StateDir, run_id: str | None, task: str | None, *,
            as_json: bool, out: TextIO) -> None:
    from agentctl.views import live_status

    run = resolve_run(state_dir, run_id)
    log = RunLog.read(run)
    traces = collect(log, task)
    status, _driver = live_status(run, log.state)  # "crashed" when nobody drives it
    if as_json:
        st = log.state
        out.write(json.dumps({"run_id": st.run_id, "pipeline": st.pipeline, "status": status,
                              "definition_sha256": st.definition_sha,
                              "tasks": [asdict(t) for t in traces]}, ensure_ascii=False) + "\n")
    else:
        out.write(render(log, traces, status))
    out.flush()
