"""``agentctl logs``: a run's history from its WAL, and everything one task saw and said.

Read-only: nothing here takes the run's lock or writes a file, so it is safe beside a live
driver. The WAL is read from byte 0 (history is the point); a torn tail left by a writer in
mid-append is simply not shown yet.

Everything printed that came from an agent, a model or a person (messages, reports, logs) is
untrusted text: ``clean`` escapes terminal control characters and bidi overrides, so an agent
cannot move the cursor, recolour the terminal or disguise text. No rich markup is used.

The reader (``RunLog``) is shared with ``report_html`` and ``trace``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agentctl import redact, store
from agentctl.errors import UsageError
from agentctl.state import RunState, apply

# An attempt's files (``tasks/<id>/attempt-<n>.<name>``) shown in their own sections; any
# other (for instance the llm runner's record of an exchange) is shown after them, by name.
KNOWN_ATTEMPT_FILES = ("prompt.md", "stdout.log", "stderr.log", "report.json", "pid")
SHOW_CAP = 64 * 1024  # bytes of one file shown inline; the rest is named, not printed
ONE_LINE_CAP = 300

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str, *, one_line: bool = False) -> str:
    """Untrusted text made safe to print: control characters become visible escapes."""
    if one_line:
        text = text.replace("\r\n", "\n").replace("\n", " ⏎ ").replace("\t", " ")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def short(text: str, cap: int = ONE_LINE_CAP) -> str:
    text = clean(text, one_line=True)
    return text if len(text) <= cap else text[: cap - 1] + "…"


# --------------------------------------------------------------------------- reading


def tolerant_replay(records: list[dict[str, Any]]) -> RunState:
    """``state.replay`` that survives records it does not understand (a newer agentctl's,
    or a half-written run): a view must never crash on them."""
    state = RunState()
    for rec in records:
        try:
            apply(state, rec)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            continue
    return state


@dataclass
class AttemptLog:
    """The WAL records of one attempt."""

    n: int
    started: dict[str, Any] | None = None
    ended: dict[str, Any] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        for c in reversed(self.calls):
            if c.get("model"):
                return str(c["model"])
        m = (self.started or {}).get("model")
        return str(m) if m else None

    @property
    def tokens(self) -> int:
        return _int((self.ended or {}).get("tokens")) + sum(_int(c.get("tokens")) for c in self.calls)

    @property
    def cost_usd(self) -> float:
        return _float((self.ended or {}).get("cost_usd")) + sum(_float(c.get("cost_usd")) for c in self.calls)


class RunLog:
    """A run's records, its replayed state, and its records grouped by task and attempt."""

    def __init__(self, run: store.RunDir, records: list[dict[str, Any]]) -> None:
        self.run = run
        self.records = records
        self.state = tolerant_replay(records)
        self.spec: dict[str, dict[str, Any]] = {}
        self.by_task: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            if rec.get("type") == "run_started":
                for t in rec.get("tasks") or []:
                    if isinstance(t, dict) and isinstance(t.get("id"), str):
                        self.spec[t["id"]] = t
            tid = rec.get("task")
            if isinstance(tid, str):
                self.by_task.setdefault(tid, []).append(rec)

    @classmethod
    def read(cls, run: store.RunDir) -> RunLog:
        return cls(run, store.scan_wal(run.wal).records)

    def task_ids(self) -> list[str]:
        """Every task: planned ones in order, each followed by the tasks it spawned (fan-out
        instances, loop iterations), then any other id the log names."""
        tasks = self.state.tasks
        out: list[str] = []
        seen: set[str] = set()

        def visit(tid: str) -> None:
            if tid in seen:
                return
            seen.add(tid)
            out.append(tid)
            t = tasks.get(tid)
            for child in t.children if t is not None else []:
                visit(child)

        for tid in [*self.spec, *tasks]:
            t = tasks.get(tid)
            if t is None or not t.parent or t.parent not in tasks:
                visit(tid)
        for tid in [*tasks, *self.by_task]:
            visit(tid)
        return out

    def has_task(self, tid: str) -> bool:
        return tid in self.spec or tid in self.state.tasks or tid in self.by_task

    def info(self, tid: str) -> dict[str, Any]:
        """What the plan (or, for a spawned task, its parent) says about a task."""
        spec = dict(self.spec.get(tid, {}))
        t = self.state.tasks.get(tid)
        if t is not None:
            for key in ("wave", "needs", "effects", "runner", "skill", "parent", "role",
                        "iteration", "index", "group"):
                if spec.get(key) is None and getattr(t, key, None) is not None:
                    spec[key] = getattr(t, key)
        return spec

    def attempts(self, tid: str) -> list[AttemptLog]:
        out: dict[int, AttemptLog] = {}
        for rec in self.by_task.get(tid, []):
            n = rec.get("attempt")
            if not isinstance(n, int):
                continue
            a = out.setdefault(n, AttemptLog(n))
            kind = rec.get("type")
            if kind == "attempt_started":
                a.started = rec
            elif kind == "attempt_ended":
                a.ended = rec
            elif kind == "llm_call":
                a.calls.append(rec)
            else:
                a.other.append(rec)
        return [out[n] for n in sorted(out)]

    def task_events(self, tid: str) -> list[dict[str, Any]]:
        """Records about a task that belong to no attempt (skips, approvals, takeovers...)."""
        return [r for r in self.by_task.get(tid, []) if not isinstance(r.get("attempt"), int)]

    def skill_file(self, skill: str | None) -> Path | None:
        """The frozen copy of a skill, as the run used it."""
        if not skill:
            return None
        base = self.run.definition / "skills"
        for p in (base / skill / "SKILL.md", base / f"{skill}.md"):
            if p.is_file():
                return p
        return None


def resolve_run(state_dir: store.StateDir, run_id: str | None) -> store.RunDir:
    return state_dir.run(run_id) if run_id else state_dir.newest()


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _float(v: Any) -> float:
    try:
        return float(v or 0.0)
    except (TypeError, ValueError):
        return 0.0


# --------------------------------------------------------------------------- history lines

_HIDDEN = {"seq", "at", "type", "crc", "task", "attempt"}
_EVENT = {
    "run_started": "run", "driver_started": "driver", "attempt_started": "start",
    "llm_call": "call", "task_skipped": "skipped", "task_needs_review": "review",
    "task_waiting_approval": "waiting", "approval": "approval", "task_taken_over": "takeover",
    "task_reset": "reset", "task_cancelled": "cancelled", "cancel_requested": "cancel",
    "run_options": "options", "run_ended": "end",
}


def clock(at: Any) -> str:
    """``2026-01-02T03:04:05.678Z`` -> ``03:04:05.678``."""
    s = str(at or "")
    return s[11:23] if len(s) >= 19 and s[10] == "T" else (s or "?")


def money(usd: float) -> str:
    return f"${usd:.4f}" if usd < 100 else f"${usd:,.2f}"


def _kv(rec: dict[str, Any], skip: set[str] = _HIDDEN) -> str:
    parts = []
    for k, v in rec.items():
        if k in skip or v is None:
            continue
        val = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        parts.append(f"{k}={short(val, 120)}")
    return " ".join(parts)


def _usage(rec: dict[str, Any]) -> str:
    out = []
    if _int(rec.get("tokens")):
        out.append(f"tokens={_int(rec.get('tokens'))}")
    if _float(rec.get("cost_usd")):
        out.append(money(_float(rec.get("cost_usd"))))
    return " ".join(out)


def describe(rec: dict[str, Any]) -> tuple[str, str]:
    """(event word, the rest of the line) for one record; unknown types generically."""
    kind = str(rec.get("type", "?"))
    r = rec
    if kind == "run_started":
        tasks = r.get("tasks") or []
        return "run", (f"started {str(r.get('at', ''))[:10]} pipeline={short(str(r.get('pipeline')))} "
                       f"tasks={len(tasks)} run={short(str(r.get('run_id')))}")
    if kind == "driver_started":
        return "driver", f"{short(str(r.get('mode', '?')))} pid={r.get('pid')} host={short(str(r.get('host')))}"
    if kind == "attempt_started":
        return "start", f"model={short(str(r['model']))}" if r.get("model") else ""
    if kind == "attempt_ended":
        word = str(r.get("outcome", "ended"))
        bits = []
        if isinstance(r.get("duration_s"), int | float):
            bits.append(f"{r['duration_s']:.2f}s")
        if _usage(r):
            bits.append(_usage(r))
        details = r.get("details")
        if isinstance(details, dict) and "exit_code" in details:
            bits.append(f"exit={details['exit_code']}")
        if r.get("category"):
            bits.append(f"[{short(str(r['category']), 40)}] {short(str(r.get('message') or ''))}")
        elif isinstance(r.get("report"), dict) and r["report"].get("summary"):
            bits.append(short(str(r["report"]["summary"]), 120))
        if r.get("retry") and word != "complete":
            bits.append("(will retry)")
        if r.get("superseded"):
            bits.append("(superseded)")
        return word, " ".join(bits)
    if kind == "llm_call":
        bits = [f"model={short(str(r.get('model')))}"] if r.get("model") else []
        if _usage(r):
            bits.append(_usage(r))
        if isinstance(r.get("latency_s"), int | float):
            bits.append(f"latency={r['latency_s']:.2f}s")
        if r.get("request_hash"):
            bits.append(f"request={str(r['request_hash'])[:12]}")
        return "call", " ".join(bits)
    if kind in ("task_skipped", "task_needs_review", "task_cancelled"):
        cat = f"[{short(str(r['category']), 40)}] " if r.get("category") else ""
        return _EVENT[kind], cat + short(str(r.get("reason") or ""))
    if kind == "approval":
        note = f": {short(str(r['note']))}" if r.get("note") else ""
        return "approval", f"{short(str(r.get('decision')))} by {short(str(r.get('by')))}{note}"
    if kind == "task_taken_over":
        rep: dict[str, Any] = r["report"] if isinstance(r.get("report"), dict) else {}
        return "takeover", (f"report supplied by {short(str(r.get('by')))}"
                            + (f": {short(str(rep.get('summary')), 120)}" if rep.get("summary") else ""))
    if kind == "tasks_expanded":
        ids = [str(i.get("id")) for i in r.get("instances") or [] if isinstance(i, dict)]
        return "expand", f"{len(ids)} instance{'s' if len(ids) != 1 else ''}: " + short(", ".join(ids), 200)
    if kind == "loop_iteration":
        roles = [f"{role} {short(str(r[role].get('id')), 60)}" for role in ("maker", "checker")
                 if isinstance(r.get(role), dict)]
        return "iterate", f"iteration {r.get('iteration')}: " + ", ".join(roles)
    if kind == "group_ended":
        bits = [f"status={short(str(r.get('status')))}"]
        if r.get("exit_reason"):
            bits.append(f"exit_reason={short(str(r['exit_reason']))}")
        if r.get("category"):
            bits.append(f"[{short(str(r['category']), 40)}] {short(str(r.get('message') or ''))}")
        return "group", " ".join(bits)
    if kind == "task_failed":
        return "failed", f"[{short(str(r.get('category')), 40)}] {short(str(r.get('message') or ''))}"
    if kind == "run_ended":
        reason = f" ({short(str(r['reason']))})" if r.get("reason") else ""
        return "end", f"status={short(str(r.get('status')))}{reason}"
    return _EVENT.get(kind, short(kind, 40)), _kv(r)


def history_line(rec: dict[str, Any], task_width: int = 16) -> str:
    word, rest = describe(rec)
    who = ""
    if isinstance(rec.get("task"), str):
        who = short(rec["task"], 60)
        if isinstance(rec.get("attempt"), int):
            who += f"#{rec['attempt']}"
    line = f"{clock(rec.get('at'))}  {word:<9} {who:<{task_width}} {rest}"
    return line.rstrip()


def task_width(records: list[dict[str, Any]]) -> int:
    ids = [t.get("id", "") for r in records if r.get("type") == "run_started"
           for t in (r.get("tasks") or []) if isinstance(t, dict)]
    return min(32, max([len(str(i)) + 3 for i in ids] + [8]))


def history(records: list[dict[str, Any]], task: str | None = None) -> Iterator[str]:
    width = task_width(records)
    for rec in records:
        if task is None or rec.get("task") == task or rec.get("type") in ("run_started", "run_ended"):
            yield history_line(rec, width)


# --------------------------------------------------------------------------- one task


def _read_text(path: Path, cap: int = SHOW_CAP) -> str | None:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size > cap:
                f.seek(size - cap)
                head = f"[showing the last {cap // 1024} KiB of {size} bytes; the whole file is {path}]\n"
            else:
                f.seek(0)
                head = ""
            data = f.read()
    except OSError:
        return None
    # Masked here too: agentctl's own files are masked as written, but an agent's own files
    # (left beside its report, or its raw report.json) are as the agent wrote them.
    return head + clean(redact.default().text(data.decode("utf-8", "replace")))


def pretty(value: Any) -> str:
    return clean(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _json_file(path: Path) -> str | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        if path.stat().st_size > SHOW_CAP:
            return text
        return redact.default().text(pretty(json.loads(path.read_bytes())))
    except (ValueError, OSError):
        return text


def load_json(path: Path, cap: int = 8 * 1024 * 1024) -> Any:
    """A JSON file's content, or None (missing, too big to show, or not JSON)."""
    try:
        if path.stat().st_size > cap:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _capped(text: str, cap: int = SHOW_CAP) -> str:
    return text if len(text) <= cap else text[:cap] + f"\n[… {len(text) - cap} more characters]"


def conversation(messages: list[Any]) -> str:
    """The messages of an llm exchange, one block per message, numbered (a request names the
    messages it sent by these numbers); replies numbered too."""
    out, replies = [], 0
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            continue
        role = short(str(m.get("role", "?")), 20)
        if role == "assistant":
            replies += 1
            role = f"assistant · reply {replies}"
        content = m.get("content")
        body = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False)
        out.append(f"--- {i} {role}\n{clean(_capped(body))}")
    return "\n".join(out)


@dataclass
class AttemptCalls:
    """The model calls of one attempt, from the best record of them there is.

    ``source`` is ``exchange`` (the llm runner's exchange.json: every request made, failed
    tries and reused responses too, each with its ``request`` rebuilt), ``files`` (the
    ``call-NNN.json`` files earlier versions wrote, each holding its ``request``), ``wal``
    (the WAL's llm_call records: paid responses only) or ``none``. ``wal_only`` are paid
    responses the WAL holds beyond those exchange.json records: the driver stopped after
    it was last written."""

    source: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    wal_only: list[dict[str, Any]] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)  # exchange.json's conversation


def exchange_calls(exchange: dict[str, Any]) -> list[dict[str, Any]]:
    """exchange.json's ``calls``, each with its ``request`` rebuilt: the conversation only
    grows, so a request is its first ``sent_messages`` messages and the call's ``params``."""
    messages = exchange.get("messages")
    messages = messages if isinstance(messages, list) else []
    out = []
    for c in exchange.get("calls") or []:
        if not isinstance(c, dict):
            continue
        c = dict(c)
        sent, params = c.get("sent_messages"), c.get("params")
        if isinstance(sent, int) and 0 <= sent <= len(messages) and isinstance(params, dict):
            c["request"] = {**params, "messages": messages[:sent]}
        out.append(c)
    return out


def attempt_calls(files: dict[str, Path], a: AttemptLog) -> AttemptCalls:
    """The calls of attempt ``a``, whose files are ``files`` (``RunDir.attempt_files``):
    exchange.json's, else old call files', else the WAL's."""
    loaded = load_json(files["exchange.json"]) if "exchange.json" in files else None
    if isinstance(loaded, dict) and isinstance(loaded.get("calls"), list):
        calls = exchange_calls(loaded)
        messages = loaded.get("messages")
        # Paid responses it records; the WAL's records of the attempt are those, in order.
        paid = sum(1 for c in calls if c.get("error") is None and not c.get("cached")
                   and c.get("response") is not None)
        return AttemptCalls("exchange", calls, a.calls[paid:],
                            messages if isinstance(messages, list) else [])
    old = [c for c in (load_json(p) for n, p in files.items() if re.fullmatch(r"call-\d+\.json", n))
           if isinstance(c, dict)]
    if old:
        return AttemptCalls("files", old)
    return AttemptCalls("wal" if a.calls else "none", list(a.calls))


def _sent_line(c: dict[str, Any], messages: list[Any]) -> str | None:
    """What an exchange.json call sent (messages by number, and its parameters), and which
    message is its answer."""
    sent, params = c.get("sent_messages"), c.get("params")
    if not isinstance(sent, int):
        return None
    text = f"sent messages 1-{sent}" if sent > 1 else f"sent message {sent}"
    if isinstance(params, dict):
        text += " with " + short(json.dumps(params, ensure_ascii=False, sort_keys=True), 400)
    answer = messages[sent] if 0 <= sent < len(messages) else None
    if (c.get("error") is None and isinstance(answer, dict) and answer.get("role") == "assistant"):
        replies = sum(1 for m in messages[:sent + 1] if isinstance(m, dict) and m.get("role") == "assistant")
        text += f"; answered by message {sent + 1} (reply {replies})"
    return text


def call_line(c: dict[str, Any], n: int) -> str:
    """One model call: from exchange.json's calls, an old call-NNN.json, or a WAL llm_call
    record."""
    bits = [f"call {c.get('n', c.get('call', n))}"]
    if isinstance(c.get("turn"), int):
        bits.append(f"turn {c['turn']}" + (f" try {c['try']}" if c.get("try") else ""))
    if c.get("model"):
        bits.append(short(str(c["model"]), 80))
    bits.append(f"{_int(c.get('tokens'))} tokens")
    bits.append(money(_float(c.get("cost_usd"))))
    if isinstance(c.get("latency_s"), int | float):
        bits.append(f"{c['latency_s']:.2f}s")
    if c.get("request_hash"):
        bits.append(f"request {short(str(c['request_hash']), 80)[:12]}")
    if c.get("cached"):
        bits.append("reused (paid by an earlier attempt)")
    err = c.get("error")
    if isinstance(err, dict):
        bits.append(f"error {short(str(err.get('kind')), 40)}: {short(str(err.get('message')))}"
                    + ("" if err.get("retryable") is None else
                       " (retryable)" if err.get("retryable") else " (not retryable)"))
        if isinstance(c.get("backoff_s"), int | float):
            bits.append(f"then waited {c['backoff_s']:.2f}s")
    return "  ".join(bits)


def _reply(call: dict[str, Any]) -> str | None:
    resp = call.get("response")
    if isinstance(resp, dict) and isinstance(resp.get("content"), str):
        return str(resp["content"])
    return None if resp is None else json.dumps(resp, indent=2, ensure_ascii=False)


def task_sections(log: RunLog, tid: str) -> Iterator[tuple[str, str]]:
    """(heading, body) pairs: everything about one task, in the order it happened."""
    run = log.run
    spec = log.info(tid)
    t = log.state.tasks.get(tid)
    head = [f"task {tid}"]
    if spec:
        head.append(f"wave {spec.get('wave')} · runner {spec.get('runner')} · effects "
                    f"{spec.get('effects')}" + (f" · skill {spec['skill']}" if spec.get("skill") else ""))
        if spec.get("needs"):
            head.append("needs " + ", ".join(map(str, spec["needs"])))
    if t is not None:
        line = f"status {t.status} · attempts {t.attempt}"
        if t.tokens or t.cost_usd:
            line += f" · tokens {t.tokens} · {money(t.cost_usd)}"
        head.append(line)
        if t.error:
            head.append(f"error [{t.error.get('category')}] {clean(str(t.error.get('message')))}")
        elif t.reason:
            head.append(f"note {clean(t.reason)}")
    yield "", "\n".join(short(h, 400) if i < len(head) - 1 else h for i, h in enumerate(head))

    tdir = run.task_dir(tid)
    packet = _json_file(tdir / "input.json")
    yield f"context packet ({tdir / 'input.json'})", packet if packet is not None else "(none: the task never started)"

    for ev in log.task_events(tid):
        yield "", history_line(ev, 0)

    last_report: Any = None
    for a in log.attempts(tid):
        files = run.attempt_files(tid, a.n)
        title = f"attempt {a.n}"
        if a.started:
            title += f" · started {clock(a.started.get('at'))}"
        if a.ended:
            word, rest = describe(a.ended)
            title += f" · {word} {clock(a.ended.get('at'))} {rest}".rstrip()
        else:
            title += " · no end recorded (running, or the driver stopped)"
        if a.model:
            title += f" · model {clean(a.model)}"
        yield f"{short(title, 600)}", _files_line(files)
        loaded_ex = load_json(files["exchange.json"]) if "exchange.json" in files else None
        exchange: dict[str, Any] = loaded_ex if isinstance(loaded_ex, dict) else {}
        messages = exchange.get("messages")
        if isinstance(messages, list) and messages:
            # The llm runner's record of the conversation: the prompt as sent (system and
            # user messages), every raw reply, and every repair request.
            facts = {k: exchange[k] for k in ("answered_by", "outcome", "turns", "problems")
                     if exchange.get(k) not in (None, [], "")}
            about = " · ".join(f"{k} {short(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False), 200)}"
                               for k, v in facts.items())
            yield (f"conversation ({files['exchange.json']})",
                   (about + "\n" if about else "") + conversation(messages))
        else:
            prompt = _read_text(files["prompt.md"]) if "prompt.md" in files else None
            if prompt is not None:
                yield f"prompt ({files['prompt.md']})", prompt
        calls = attempt_calls(files, a)
        if calls.source == "exchange":
            lines = []
            for i, c in enumerate(calls.calls, 1):
                lines.append(call_line(c, i))
                sent = _sent_line(c, calls.messages)
                if sent is not None:
                    lines.append("    " + sent)
            first = len(calls.calls) + 1
            for i, c in enumerate(calls.wal_only, first):  # (their `call` counts paid ones)
                lines.append(call_line({k: v for k, v in c.items() if k != "call"}, i)
                             + "  (in the WAL only: made after exchange.json was last written; "
                               "its reply is below)")
            yield (f"model calls ({files['exchange.json']}: each request is the conversation's "
                   "first messages, numbered as above, and its parameters)", "\n".join(lines))
            for i, c in enumerate(calls.wal_only, first):
                reply = _reply(c)
                if reply is not None:
                    yield f"raw reply of call {i} (from the WAL)", clean(_capped(reply))
        elif calls.source == "files":
            where = next(p.parent for n, p in files.items() if n.startswith("call-"))
            yield (f"model calls ({where}/call-*.json: each request and response in full)",
                   "\n".join(call_line(c, i) for i, c in enumerate(calls.calls, 1)))
        elif calls.source == "wal":
            yield "model calls (from the WAL)", "\n".join(call_line(c, i) for i, c in enumerate(a.calls, 1))
        if not messages:
            for i, c in enumerate(a.calls, 1):
                reply = _reply(c)
                if reply is not None:
                    yield f"raw reply of call {i}", clean(_capped(reply))
        for name, path in files.items():
            # (An older run's call files, when it has exchange.json too, hold what it does.)
            if (name in KNOWN_ATTEMPT_FILES or (name == "exchange.json" and messages)
                    or re.fullmatch(r"call-\d+\.json", name)):
                continue
            body = _json_file(path) if name.endswith(".json") else _read_text(path)
            if body is not None:
                yield f"{name} ({path})", body
        for name in ("stdout.log", "stderr.log"):
            text = _read_text(files[name]) if name in files else None
            if text is not None:
                yield f"{name.split('.')[0]} ({files[name]})", text if text else "(empty)"
        report = (a.ended or {}).get("report")
        if report is not None:
            last_report = report
            yield f"report of attempt {a.n}", pretty(report)
        else:
            raw = _json_file(files["report.json"]) if "report.json" in files else None
            if raw is not None:
                yield f"report file of attempt {a.n} ({files['report.json']})", raw
        for rec in a.other:
            yield "", history_line(rec, 0)

    for path in _other_files(tdir):  # an agent's, left beside its report ($AGENTCTL_OUTPUT)
        body = _json_file(path) if path.name.endswith(".json") else _read_text(path)
        if body is not None:
            yield f"{path.name}, not agentctl's ({path})", body

    out = _json_file(tdir / "output.json")
    if out is not None:
        if t is None or t.report is None:  # not ours: the WAL commits no report for it
            yield f"output.json, not a committed report: the WAL has none ({tdir / 'output.json'})", out
        elif last_report is not None and out == pretty(last_report):
            yield "", f"committed report: {tdir / 'output.json'} (the report above)"
        else:
            yield f"committed report ({tdir / 'output.json'})", out


_OWN_FILE = re.compile(r"(input|output)\.json|attempt-\d+\..+")


def _other_files(tdir: Path) -> list[Path]:
    """Files in a task's directory that agentctl did not write: an agent's own, left beside
    its report (its $AGENTCTL_OUTPUT is ``attempt-<n>.report.json`` there)."""
    try:
        entries = sorted(os.scandir(tdir), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries
            if not e.name.startswith(".") and not _OWN_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False)]


def _files_line(files: dict[str, Path]) -> str:
    """``files attempt-1.prompt.md, attempt-1.stdout.log (in .../tasks/<id>)``."""
    if not files:
        return "files (none)"
    folders = {p.parent for p in files.values()}
    if len(folders) == 1:
        return f"files {', '.join(p.name for p in files.values())} (in {folders.pop()})"
    return "files " + ", ".join(str(p) for p in files.values())


def task_text(log: RunLog, tid: str) -> str:
    parts = []
    for heading, body in task_sections(log, tid):
        if heading:
            parts.append(f"\n== {heading}")
        parts.append(body.rstrip("\n"))
    return "\n".join(parts).lstrip("\n") + "\n"


# --------------------------------------------------------------------------- following


def follow(run: store.RunDir, out: TextIO, *, task: str | None = None, poll_s: float = 0.5,
           sleep: Callable[[float], None] = time.sleep,
           driver_gone: Callable[[], bool] | None = None) -> str:
    """Print the history, then new records as they are logged, until the run ends.

    Returns why it stopped: ``ended`` (a run_ended record is the newest) or ``crashed`` (no
    new record while ``driver_gone()`` says nobody drives the run, three polls in a row).
    """
    offset, seq, width = 0, 0, 16
    quiet = 0
    while True:
        scan = store.scan_wal(run.wal, start=offset, start_seq=seq)
        ended = False
        for rec in scan.records:
            if rec.get("type") == "run_started":
                width = task_width([rec])
            if task is None or rec.get("task") == task or rec.get("type") in ("run_started", "run_ended"):
                out.write(history_line(rec, width) + "\n")
            seq = rec["seq"]
            # A paused run may be resumed, so only the newest record decides.
            ended = rec.get("type") == "run_ended"
        out.flush()
        if scan.records:
            offset, quiet = scan.good_bytes, 0
            if ended:
                return "ended"
        else:
            quiet += 1
            if driver_gone is not None and quiet >= 3 and driver_gone():
                return "crashed"
        sleep(poll_s)


# --------------------------------------------------------------------------- the command


def command(state_dir: store.StateDir, run_id: str | None, task: str | None, *,
            follow_: bool, out: TextIO, err: Callable[[str], None]) -> None:
    """``agentctl logs``: raises AgentctlError for what a user can fix."""
    run = resolve_run(state_dir, run_id)
    log = RunLog.read(run)
    if task is not None and not log.has_task(task):
        raise unknown_task(run.run_id, task, log.task_ids())
    if follow_:
        from agentctl import views

        def gone() -> bool:
            info, age = run.read_driver()
            return not store.driver_alive(info, age, views.DRIVER_BEAT_S)

        why = follow(run, out, task=task, driver_gone=gone)
        if why == "crashed":
            err(f"agentctl: no driver is running run {run.run_id}; continue it with "
                f"`agentctl resume {run.run_id}`")
        return
    if task is None:
        for line in history(log.records):
            out.write(line + "\n")
    else:
        out.write(task_text(log, task))
    out.flush()


def unknown_task(run_id: str, task: str, known: list[str]) -> UsageError:
    close = difflib.get_close_matches(task, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UsageError(f"run {run_id} has no task '{task}'{hint}")
