"""``agentctl report``: one self-contained HTML file that shows a run as a timeline.

The page needs nothing but itself: inline CSS, one small inline script (allowed by its hash in
the page's Content-Security-Policy, which also forbids every network fetch), no fonts, no
images. Every piece of run data -- task ids, agent reports, messages, logs -- is untrusted and
goes through ``esc`` (``html.escape``); nothing from a run is ever placed in the script.

Layout: one lane per task, grouped by wave; each attempt is a bar placed by its start and end
time and coloured by its outcome; attempts that lost their heartbeat (stale, timeout, or cut
off by a dead driver) are hatched; the waits between attempts are dashed; periods with no
driver are shaded across the timeline, and long idle stretches (a paused run resumed the next
day) are folded so that the work stays readable. Each lane is a ``<details>``: click it for the
model, tokens, cost, duration, the context packet the task received and the report it returned.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agentctl import store
from agentctl.logs import AttemptLog, RunLog, money, resolve_run

SHOW_CAP = 16 * 1024  # bytes of a packet, report or log shown per task
HATCHED = ("timeout", "stale")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def ts(at: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


def dur(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


# --------------------------------------------------------------------------- time axis


@dataclass
class Axis:
    """Maps wall time to a percentage of the track, folding long idle stretches."""

    t0: float
    t1: float
    folds: list[tuple[float, float]] = field(default_factory=list)  # idle (start, end), real time
    fold_share: float = 0.03  # of the track, per fold

    @classmethod
    def build(cls, t0: float, t1: float, busy: list[tuple[float, float]]) -> Axis:
        t1 = max(t1, t0 + 0.001)
        merged: list[list[float]] = []
        for a, b in sorted((max(t0, a), min(t1, max(a, b))) for a, b in busy):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        total = t1 - t0
        # A stretch with nothing going on that takes over a fifth of the run (and a minute)
        # would squash the work into slivers: fold it.
        limit = max(60.0, 0.2 * total)
        folds = []
        edges = [t0] + [x for m in merged for x in m] + [t1]
        for i in range(0, len(edges) - 1, 2):  # idle: (t0, start), (end, next start)...
            a, b = edges[i], edges[i + 1]
            if b - a > limit:
                folds.append((a, b))
        return cls(t0, t1, folds)

    def _kept(self) -> float:
        return (self.t1 - self.t0) - sum(b - a for a, b in self.folds)

    def x(self, t: float) -> float:
        t = min(max(t, self.t0), self.t1)
        kept = max(self._kept(), 1e-6)
        share = self.fold_share if self.folds else 0.0
        scale = (100.0 - share * 100 * len(self.folds)) / kept
        pos, last = 0.0, self.t0
        for a, b in self.folds:
            if t <= a:
                break
            pos += (a - last) * scale
            if t < b:
                return pos + (t - a) / (b - a) * share * 100
            pos += share * 100
            last = b
        return min(100.0, pos + (t - last) * scale)

    def ticks(self, n: int = 8) -> list[tuple[float, str]]:
        span = max(self._kept(), 0.001)
        step = 1.0
        for s in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60,
                  120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400):
            step = s
            if span / s <= n:
                break
        out = []
        k = 0
        while True:
            t = self.t0 + k * step
            if t > self.t1 + 1e-9:
                break
            if not any(a < t < b for a, b in self.folds):
                out.append((self.x(t), _tick_label(k * step, step)))
            k += 1
            if k > 10000:
                break
        return out


def _tick_label(seconds: float, step: float) -> str:
    if not seconds:
        return "+0"
    if seconds >= 3600 and step < 60:  # "+8h28m15s", so that neighbours differ
        h, rest = divmod(round(seconds), 3600)
        return f"+{h}h{rest // 60:02d}m{rest % 60:02d}s"
    return "+" + dur(seconds)


# --------------------------------------------------------------------------- reading


def _read(path: Path, cap: int = SHOW_CAP, tail: bool = False) -> str | None:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - cap) if tail else 0)
            data = f.read(cap)
    except OSError:
        return None
    text = data.decode("utf-8", "replace")
    if size > cap:
        note = f"[{size} bytes; the whole file is {path}]"
        text = f"{note}\n…{text}" if tail else f"{text}…\n{note}"
    return text


def _json_text(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= SHOW_CAP else text[:SHOW_CAP] + "\n… (cut at 16 KiB)"


def _pretty_file(path: Path) -> str | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return _json_text(json.loads(text))
    except ValueError:
        return text


@dataclass
class Bar:
    n: int
    start: float
    end: float
    kind: str  # css class: complete failed blocked abandoned running unfinished
    hatched: bool
    title: str


def _bars(a: AttemptLog, t_end: float, live: bool) -> Bar | None:
    start = ts((a.started or {}).get("at"))
    if start is None:
        return None
    e = a.ended or {}
    end = ts(e.get("at"))
    cat = e.get("category")
    if end is None:
        kind, end = ("running" if live else "unfinished"), t_end
    else:
        kind = str(e.get("outcome") or "failed")
        if kind not in ("complete", "failed", "blocked", "abandoned"):
            kind = "failed"
    hatched = cat in HATCHED or kind in ("abandoned", "unfinished")
    bits = [f"attempt {a.n}", kind if end is not None else "running"]
    if cat:
        bits.append(str(cat))
    bits.append(dur(end - start))
    if a.model:
        bits.append(a.model)
    title = " · ".join(bits)
    if e.get("message"):
        title += "\n" + str(e["message"])[:500]
    return Bar(a.n, start, end, kind, hatched, title)


# --------------------------------------------------------------------------- totals


def totals(log: RunLog) -> tuple[list[list[Any]], list[list[Any]]]:
    """Rows by skill and by model: (name, tasks|attempts, ..., tokens, cost, time)."""
    by_skill: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    for tid in log.task_ids():
        spec = log.info(tid)
        t = log.state.tasks.get(tid)
        key = spec.get("skill") or f"(no skill: {spec.get('runner', '?')})"
        s = by_skill.setdefault(key, {"tasks": 0, "complete": 0, "attempts": 0, "tokens": 0,
                                      "cost": 0.0, "time": 0.0})
        s["tasks"] += 1
        s["complete"] += 1 if t and t.status == "complete" else 0
        for a in log.attempts(tid):
            s["attempts"] += 1
            s["tokens"] += a.tokens
            s["cost"] += a.cost_usd
            d = (a.ended or {}).get("duration_s")
            s["time"] += float(d) if isinstance(d, int | float) else 0.0
            groups: list[tuple[str, int, int, float, float | None]] = []
            for c in a.calls:
                lat = c.get("latency_s")
                groups.append((str(c.get("model") or a.model or "?"), 1, int(c.get("tokens") or 0),
                               float(c.get("cost_usd") or 0.0),
                               float(lat) if isinstance(lat, int | float) else None))
            rest_tok = int((a.ended or {}).get("tokens") or 0)
            rest_cost = float((a.ended or {}).get("cost_usd") or 0.0)
            if not a.calls or rest_tok or rest_cost:
                groups.append((a.model or f"(no model: {spec.get('runner', '?')})", 0, rest_tok,
                               rest_cost, None))
            for i, (name, calls, tok, cost, lat) in enumerate(groups):
                m = by_model.setdefault(name, {"attempts": 0, "calls": 0, "tokens": 0,
                                               "cost": 0.0, "lat": []})
                m["attempts"] += 1 if i == 0 else 0
                m["calls"] += calls
                m["tokens"] += tok
                m["cost"] += cost
                if lat is not None:
                    m["lat"].append(lat)
    skills = [[k, v["tasks"], v["complete"], v["attempts"], v["tokens"], money(v["cost"]),
               dur(v["time"])] for k, v in sorted(by_skill.items(), key=lambda kv: -kv[1]["cost"])]
    models = [[k, v["attempts"], v["calls"], v["tokens"], money(v["cost"]),
               dur(sum(v["lat"]) / len(v["lat"])) if v["lat"] else "–"]
              for k, v in sorted(by_model.items(), key=lambda kv: -kv[1]["cost"])]
    return skills, models


# --------------------------------------------------------------------------- rendering


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _pre(text: str | None, empty: str) -> str:
    return f"<pre>{esc(text)}</pre>" if text is not None else f'<p class="muted">{esc(empty)}</p>'


def _span(axis: Axis, a: float, b: float, cls: str, title: str = "", label: str = "") -> str:
    left = axis.x(a)
    width = max(0.0, axis.x(b) - left)
    t = f' title="{esc(title)}"' if title else ""
    inner = esc(label) if label else ""
    return f'<span class="{cls}" style="left:{left:.3f}%;width:{width:.3f}%"{t}>{inner}</span>'


def _mark(axis: Axis, at: float, cls: str, title: str) -> str:
    return f'<span class="mark {cls}" style="left:{axis.x(at):.3f}%" title="{esc(title)}"></span>'


def _skill_label(log: RunLog, skill: Any) -> str:
    if not skill:
        return "–"
    path = log.skill_file(str(skill))
    if path is None:
        return str(skill)
    return f"{skill} · sha256 {_sha256(str(path))[:12]}"


@functools.lru_cache(maxsize=256)
def _sha256(path: str) -> str:  # a skill is shared by many tasks: hash it once
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_EVENT_MARKS = {"task_skipped": "skip", "task_waiting_approval": "wait", "approval": "approval",
                "task_taken_over": "takeover", "task_cancelled": "cancel",
                "task_needs_review": "review", "task_reset": "reset"}


def _lane(log: RunLog, tid: str, axis: Axis, t_end: float,
          live: bool) -> tuple[str, list[tuple[float, float]]]:
    run = log.run
    spec = log.info(tid)
    t = log.state.tasks.get(tid)
    status = t.status if t else "unknown"
    attempts = log.attempts(tid)
    track: list[str] = []
    spans: list[tuple[float, float]] = []
    prev: Bar | None = None
    for a in attempts:
        bar = _bars(a, t_end, live)
        if bar is None:
            continue
        if prev is not None and bar.start > prev.end:
            track.append(_span(axis, prev.end, bar.start, "gap",
                               f"waited {dur(bar.start - prev.end)} before attempt {bar.n}"))
        cls = f"bar {bar.kind}" + (" hatched" if bar.hatched else "")
        track.append(_span(axis, bar.start, bar.end, cls, bar.title))
        spans.append((bar.start, bar.end))
        prev = bar
    if t is not None and t.group:
        # A fan-out or a loop: a bracket over the time its children ran.
        g0, g1 = ts(t.started_at), ts(t.ended_at) or t_end
        if g0 is not None:
            what = (f"{t.group}: {len(t.children)} task(s)"
                    + (f", stopped: {t.exit_reason}" if t.exit_reason else ""))
            track.append(_span(axis, g0, g1, f"groupbar {esc(status)}", what))
            spans.append((g0, g1))
    for ev in log.task_events(tid):
        mark = _EVENT_MARKS.get(str(ev.get("type")))
        at = ts(ev.get("at"))
        if mark and at is not None:
            why = ev.get("reason") or ev.get("note") or ev.get("decision") or ""
            track.append(_mark(axis, at, mark, f"{str(ev.get('type')).replace('_', ' ')}: {why}"[:500]))
    tokens = sum(a.tokens for a in attempts)
    cost = sum(a.cost_usd for a in attempts)
    took = sum(float(d) for a in attempts
               if isinstance(d := (a.ended or {}).get("duration_s"), int | float))
    models = sorted({a.model for a in attempts if a.model})
    for a in attempts:
        models += [str(c["model"]) for c in a.calls if c.get("model") and str(c["model"]) not in models]
    info = f"{len(attempts)}× · {dur(took)}" if attempts else ""
    if t is not None and t.group:
        info = f"{t.group} · {len(t.children)}"
    depth, up = 0, spec.get("parent")
    while up and depth < 3:
        depth += 1
        up = log.info(str(up)).get("parent")
    summary = (f'<summary><span class="name" title="{esc(tid)}: {esc(status)}">'
               f'<span class="tid">{esc(tid)}</span><span class="badge {esc(status)}" '
               f'role="img" aria-label="{esc(status)}"></span></span>'
               f'<span class="info">{esc(info)}</span>'
               f'<span class="track">{"".join(track)}</span></summary>')

    # the panel
    err = (t.error if t else None) or None
    facts = [("status", status), ("runner", spec.get("runner")), ("effects", spec.get("effects")),
             ("skill", _skill_label(log, spec.get("skill"))), ("model", ", ".join(models) or "–"),
             ("attempts", len(attempts)), ("tokens", tokens), ("cost", money(cost)),
             ("duration", dur(took) if attempts else "–"),
             ("started", t.started_at if t else None), ("ended", t.ended_at if t else None)]
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v if v is not None else '–')}</dd></div>"
                 for k, v in facts)
    needs = spec.get("needs") or []
    if needs:
        dl += "<div><dt>needs</dt><dd>" + ", ".join(
            f'<a href="#task-{esc(n)}">{esc(n)}</a>' for n in needs) + "</dd></div>"
    parts = [f'<dl class="facts">{dl}</dl>']
    if err:
        parts.append(f'<div class="error"><b>{esc(err.get("category"))}</b> '
                     f'<pre>{esc(err.get("message"))}</pre></div>')
    elif t and t.reason:
        parts.append(f'<p class="muted">{esc(t.reason)}</p>')
    if attempts:
        rows = []
        for a in attempts:
            e = a.ended or {}
            d = e.get("duration_s")
            rows.append([a.n, str((a.started or {}).get("at", ""))[11:23],
                         dur(float(d)) if isinstance(d, int | float) else "–",
                         e.get("outcome", "running" if live else "no end"),
                         f"{e.get('category')}: {e.get('message')}" if e.get("category") else "",
                         a.model or "–", a.tokens, money(a.cost_usd)])
        parts.append("<h4>attempts</h4>" + _table(
            ["#", "started", "took", "outcome", "error", "model", "tokens", "cost"], rows))
        calls = [[a.n, c.get("model"), c.get("tokens"), money(float(c.get("cost_usd") or 0)),
                  dur(float(c["latency_s"])) if isinstance(c.get("latency_s"), int | float) else "–",
                  str(c.get("request_hash") or "")[:16]] for a in attempts for c in a.calls]
        if calls:
            parts.append("<h4>model calls</h4>" + _table(
                ["attempt", "model", "tokens", "cost", "latency", "request"], calls))
    tdir = run.task_dir(tid)
    parts.append("<h4>context packet</h4>" + _pre(_pretty_file(tdir / "input.json"),
                                                   "none: the task never started"))
    report: Any = t.report if t else None
    last_files = run.attempt_files(tid, attempts[-1].n) if attempts else {}
    if report is None and attempts:
        report_text = _pretty_file(last_files["report.json"]) if "report.json" in last_files else None
    else:
        report_text = _json_text(report) if report is not None else None
    parts.append('<h4>report</h4><div class="report">' + _pre(report_text, "no report") + "</div>")
    last_calls = attempts[-1].calls if attempts else []
    if report_text is None and last_calls:
        resp = last_calls[-1].get("response")
        reply = resp.get("content") if isinstance(resp, dict) else None
        if isinstance(reply, str):
            parts.append(f"<h4>last reply of the model (attempt {attempts[-1].n})</h4>"
                         + _pre(reply[:SHOW_CAP], ""))
    if attempts and (attempts[-1].ended or {}).get("outcome") not in (None, "complete"):
        stderr = _read(last_files["stderr.log"], 4096, tail=True) if "stderr.log" in last_files else None
        if stderr:
            parts.append(f"<h4>stderr of attempt {attempts[-1].n} (end)</h4>" + _pre(stderr, ""))
    parts.append(f'<p class="muted">files: {esc(tdir)}</p>')
    body = f'<div class="panel">{"".join(parts)}</div>'
    child = f" child{depth}" if depth else ""
    lane = (f'<details class="lane{child}" id="task-{esc(tid)}" data-task="{esc(tid)}" '
            f'data-status="{esc(status)}">{summary}{body}</details>')
    return lane, spans


_CSS = """
:root{--ok:#1f9d55;--bad:#e5484d;--warn:#f59f00;--grey:#8b8d98;--run:#3e63dd;--line:#e6e8eb;
--muted:#687076;--bg:#fbfcfd;--lab:250px;font-family:system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;font-size:14px;color:#11181c;background:var(--bg)}
body{margin:0;padding:20px 28px 60px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:13px;margin:0;font-weight:600}
h3{font-size:15px;margin:22px 0 8px}h4{font-size:12px;margin:14px 0 4px;color:var(--muted);
text-transform:uppercase;letter-spacing:.04em}
.sub{color:var(--muted);margin-bottom:16px}.muted{color:var(--muted)}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0 18px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:90px}
.card b{display:block;font-size:18px}.c-complete b{color:var(--ok)}.c-failed b{color:var(--bad)}
.c-blocked b,.c-skipped b{color:#d08700}.card span{color:var(--muted);font-size:12px}
.totals{display:flex;flex-wrap:wrap;gap:28px}
table{border-collapse:collapse;font-size:12.5px;background:#fff}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f5;font-weight:600}
td{max-width:520px;overflow-wrap:anywhere}
.controls{display:flex;gap:8px;align-items:center;margin:18px 0 8px;flex-wrap:wrap}
.controls input,.controls select,.controls button{font:inherit;padding:4px 8px;border:1px solid #c1c8cd;
border-radius:6px;background:#fff}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:var(--muted);margin-bottom:8px}
.legend i{display:inline-block;width:18px;height:10px;border-radius:2px;vertical-align:-1px;margin-right:4px;position:relative}
.timeline{background:#fff;border:1px solid var(--line);border-radius:8px;position:relative}
.overlay{position:absolute;top:24px;bottom:0;left:calc(var(--lab) + 70px);right:12px;pointer-events:none;z-index:1}
.axis{z-index:3}
.axis{position:sticky;top:0;z-index:3;display:grid;grid-template-columns:var(--lab) 70px 1fr;
background:#fff;border-bottom:1px solid var(--line);height:24px;border-radius:8px 8px 0 0}
.axis .track{height:24px}
.tick{position:absolute;top:0;bottom:0;border-left:1px solid var(--line);font-size:11px;color:var(--muted);
padding-left:3px;line-height:24px;white-space:nowrap}
.wave>h2{display:grid;grid-template-columns:var(--lab) 70px 1fr;background:#f8f9fa;
border-bottom:1px solid var(--line);padding:0;height:22px;line-height:22px}
.wave>h2>span:first-child{padding-left:10px}
.lane{border-bottom:1px solid #f1f3f5}
.lane>summary{display:grid;grid-template-columns:var(--lab) 70px 1fr;align-items:center;height:22px;
cursor:pointer;list-style:none}
.lane>summary::-webkit-details-marker{display:none}
.lane>summary:hover{background:#f5f8ff}.lane[open]>summary{background:#eef3ff}
.name{padding-left:10px;white-space:nowrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:12.5px;display:flex;gap:6px;align-items:center;min-width:0}
.tid{overflow:hidden;text-overflow:ellipsis}
.child1 .name{padding-left:28px}.child2 .name{padding-left:46px}.child3 .name{padding-left:64px}
.groupbar{position:absolute;top:6px;height:7px;border:2px solid var(--grey);border-bottom:0;
border-radius:3px 3px 0 0;box-sizing:border-box;min-width:4px}
.groupbar.complete{border-color:var(--ok)}.groupbar.failed{border-color:var(--bad)}
.groupbar.running{border-color:var(--run)}
.name::before{content:"▸";color:var(--muted);font-size:10px}.lane[open] .name::before{content:"▾"}
.badge{width:8px;height:8px;border-radius:50%;background:var(--grey);flex:none;margin-left:auto;margin-right:6px}
.badge.complete{background:var(--ok)}.badge.failed,.badge.cancelled{background:var(--bad)}
.badge.blocked,.badge.needs_review,.badge.waiting_approval{background:var(--warn)}
.badge.running{background:var(--run)}.badge.skipped,.badge.pending{background:#fff;border:1.5px solid #aab2b9;box-sizing:border-box}.info{font-size:11px;color:var(--muted);white-space:nowrap;text-align:right;padding-right:8px}
.track{position:relative;height:22px;margin-right:12px}
.bar{position:absolute;top:5px;bottom:5px;min-width:3px;border-radius:3px;background-color:var(--grey)}
.bar.complete{background-color:var(--ok)}.bar.failed{background-color:var(--bad)}
.bar.blocked{background-color:var(--warn)}.bar.running{background-color:var(--run)}
.bar.abandoned,.bar.unfinished{background-color:var(--grey)}
.hatched,.bar.hatched{background-image:repeating-linear-gradient(135deg,rgba(255,255,255,.75) 0 3px,transparent 3px 7px)}
.gap{position:absolute;top:10px;height:0;border-top:2px dotted #9aa4ad}
.mark{position:absolute;top:5px;width:10px;height:10px;margin-left:-5px;transform:rotate(45deg);
border:2px solid var(--warn);background:#fff;box-sizing:border-box}
.mark.takeover,.mark.approval{border-color:#8e4ec6}.mark.cancel,.mark.review{border-color:var(--bad)}
.mark.reset{border-color:var(--run)}
.band{position:absolute;top:0;bottom:0;background:repeating-linear-gradient(135deg,rgba(229,72,77,.10) 0 4px,transparent 4px 8px)}
.band.paused{background:repeating-linear-gradient(135deg,rgba(245,159,0,.12) 0 4px,transparent 4px 8px)}
.fold{position:absolute;top:0;bottom:0;background:repeating-linear-gradient(90deg,rgba(0,0,0,.07) 0 2px,transparent 2px 5px)}
.axis .fold{font-size:10px;color:var(--muted);text-align:center;line-height:24px;overflow:hidden}
.span{position:absolute;top:10px;height:3px;border-radius:2px;background:#d7dbdf}
.panel{padding:6px 16px 14px 34px;background:#fcfcfd;border-top:1px solid #f1f3f5;position:relative;z-index:2}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:2px 14px;margin:6px 0}
.facts dt{font-size:11px;color:var(--muted)}.facts dd{margin:0 0 4px;overflow-wrap:anywhere}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:8px 10px;
max-height:360px;overflow:auto;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
.error{border-left:3px solid var(--bad);padding-left:10px;margin:8px 0}.error pre{margin-top:4px}
.lg-complete{background-color:var(--ok)}.lg-failed{background-color:var(--bad)}
.lg-blocked{background-color:var(--warn)}.lg-running{background-color:var(--run)}.lg-abandoned{background-color:var(--grey)}
.st{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:12px;background:var(--grey)}
.st.complete{background:var(--ok)}.st.failed,.st.crashed,.st.budget_exceeded{background:var(--bad)}
.st.running{background:var(--run)}.st.paused,.st.cancelled,.st.interrupted{background:var(--warn)}
a{color:#3e63dd}
"""

_JS = """(function(){
var q=document.getElementById('q'),st=document.getElementById('st'),shown=document.getElementById('shown');
var lanes=Array.prototype.slice.call(document.querySelectorAll('details.lane'));
var waves=Array.prototype.slice.call(document.querySelectorAll('section.wave'));
function apply(){var t=q.value.toLowerCase(),s=st.value,n=0;
lanes.forEach(function(l){var ok=(!t||l.dataset.task.toLowerCase().indexOf(t)>=0)&&(!s||l.dataset.status===s);
l.hidden=!ok;if(ok){n++;}});
waves.forEach(function(w){w.hidden=!w.querySelector('details.lane:not([hidden])');});
shown.textContent=n+' of '+lanes.length+' tasks';}
q.addEventListener('input',apply);st.addEventListener('change',apply);
document.getElementById('open').addEventListener('click',function(){lanes.forEach(function(l){if(!l.hidden){l.open=true;}});});
document.getElementById('close').addEventListener('click',function(){lanes.forEach(function(l){l.open=false;});});
function hash(){var id=decodeURIComponent(location.hash.slice(1));var el=id?document.getElementById(id):null;
if(el&&el.tagName==='DETAILS'){el.hidden=false;el.open=true;el.scrollIntoView({block:'center'});}}
window.addEventListener('hashchange',hash);apply();hash();
})();"""


_BY_PEOPLE = frozenset({"approval", "task_taken_over", "task_reset", "task_cancelled",
                        "cancel_requested", "run_options"})
_ORDER = {s: i for i, s in enumerate(("complete", "failed", "blocked", "cancelled", "needs_review",
                                      "waiting_approval", "stale", "running", "pending", "skipped"))}


def render(log: RunLog, status: str, now: float | None = None) -> str:
    """The page, as one string. ``status`` is the run's live status (``crashed``...)."""
    st = log.state
    live = status == "running"
    times = [x for r in log.records if (x := ts(r.get("at"))) is not None]
    t0 = times[0] if times else 0.0
    t_end = max(times) if times else 1.0
    if live:
        t_end = max(t_end, now if now is not None else time.time())

    # driver gaps: from the last record before a driver_started to it
    bands: list[tuple[float, float, str, str]] = []
    last_at: float | None = None
    last_type = ""
    drivers = 0
    for r in log.records:
        at = ts(r.get("at"))
        drivers += r.get("type") == "driver_started"
        if (r.get("type") == "driver_started" and drivers > 1 and last_at is not None
                and at is not None and at > last_at):
            kind = "paused" if last_type == "run_ended" else "down"
            what = ("the run had stopped (paused or ended)" if kind == "paused"
                    else "the driver stopped (crash or kill)")
            bands.append((last_at, at, kind, f"{what}: nothing logged for {dur(at - last_at)}, "
                                             f"then {r.get('mode', 'resume')}"))
        # Records a person writes while no driver runs (approve, complete...) don't end a gap.
        if at is not None and r.get("type") not in _BY_PEOPLE:
            last_at, last_type = at, str(r.get("type"))
    busy: list[tuple[float, float]] = []
    for tid in log.task_ids():
        for a in log.attempts(tid):
            s = ts((a.started or {}).get("at"))
            e = ts((a.ended or {}).get("at")) or t_end
            if s is not None:
                busy.append((s, e))
    # Only attempts count as work: a marker (an approval in the middle of a pause) may sit
    # in a folded stretch.
    busy += [(x, x) for x in (t0, t_end)]
    axis = Axis.build(t0, t_end, busy)

    # Drawn once, over every lane.
    overlay = "".join(_span(axis, a, b, f"band {k}") for a, b, k, _t in bands)
    overlay += "".join(_span(axis, a, b, "fold") for a, b in axis.folds)

    waves: dict[int, list[str]] = {}
    for tid in log.task_ids():
        w = log.info(tid).get("wave")
        waves.setdefault(w if isinstance(w, int) else -1, []).append(tid)
    sections = []
    for w in sorted(waves):
        lanes, spans = [], []
        counts: dict[str, int] = {}
        for tid in waves[w]:
            lane, sp = _lane(log, tid, axis, t_end, live)
            lanes.append(lane)
            spans += sp
            tst = log.state.tasks[tid].status if tid in log.state.tasks else "unknown"
            counts[tst] = counts.get(tst, 0) + 1
        what = " · ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
        wave_span = (_span(axis, min(a for a, _ in spans), max(b for _, b in spans), "span",
                           f"wave {w}: {dur(max(b for _, b in spans) - min(a for a, _ in spans))}")
                     if spans else "")
        label = f"wave {w}" if w >= 0 else "not in the plan"
        sections.append(f'<section class="wave"><h2 title="{esc(what)}"><span>{esc(label)} · '
                        f'{len(waves[w])} task{"s" if len(waves[w]) != 1 else ""}</span>'
                        f'<span class="info"></span><span class="track">{wave_span}</span></h2>'
                        f'{"".join(lanes)}</section>')

    ticks = "".join(f'<span class="tick" style="left:{x:.3f}%">{esc(label)}</span>'
                    for x, label in axis.ticks())
    ticks += "".join(_span(axis, a, b, "fold", f"{dur(b - a)} idle, folded", "≈")
                     for a, b in axis.folds)
    ticks += "".join(_span(axis, a, b, f"band {k}", title) for a, b, k, title in bands)

    skills, models = totals(log)
    counts_all: dict[str, int] = {}
    for t in st.tasks.values():
        counts_all[t.status] = counts_all.get(t.status, 0) + 1
    attempts_n = sum(len(log.attempts(tid)) for tid in log.task_ids())
    cards: list[tuple[str, Any]] = [
        ("tasks", len(st.tasks)), *sorted(counts_all.items(), key=lambda kv: _ORDER.get(kv[0], 99)),
        ("attempts", attempts_n),
        ("tokens", st.tokens), ("cost", money(st.cost_usd)),
        ("wall time", dur(t_end - t0) if times else "–")]
    cards_html = "".join(f'<div class="card c-{esc(k)}"><b>{esc(v)}</b><span>{esc(k.replace("_", " "))}</span></div>'
                         for k, v in cards)
    options = "".join(f'<option value="{esc(s)}">{esc(s.replace("_", " "))} ({n})</option>'
                      for s, n in sorted(counts_all.items()))
    legend = "".join(f'<span><i class="lg-{k}{h}"></i>{esc(label)}</span>' for k, h, label in (
        ("complete", "", "complete"), ("failed", "", "failed"), ("blocked", "", "blocked"),
        ("running", "", "running"), ("failed", " hatched", "timeout / stale (no heartbeat)"),
        ("abandoned", " hatched", "cut off (driver gone) / cancelled")))
    legend += ('<span><i class="gap-lg" style="border-top:2px dotted #9aa4ad;height:0;'
               'vertical-align:3px"></i>wait before a retry</span>'
               '<span><i style="border:2px solid #f59f00;width:8px;height:8px;transform:rotate(45deg);'
               'box-sizing:border-box"></i>skipped / waiting</span>'
               '<span><i class="band" style="position:relative;display:inline-block"></i>no driver</span>')
    started = esc(st.started_at or "")
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{esc(st.run_id)} · agentctl report</title>
<style>{_CSS}</style></head>
<body>
<h1>{esc(st.pipeline)} <span class="st {esc(status)}">{esc(status)}</span></h1>
<div class="sub">run <b>{esc(st.run_id)}</b> · started {started} · pipeline sha256 {esc(st.definition_sha[:16])}
{f" · {esc(st.reason)}" if st.reason else ""}</div>
<div class="cards">{cards_html}</div>
<div class="totals">
<div><h3>By skill</h3>{_table(["skill", "tasks", "complete", "attempts", "tokens", "cost", "agent time"], skills)}</div>
<div><h3>By model</h3>{_table(["model", "attempts", "calls", "tokens", "cost", "avg latency"], models)}</div>
</div>
<h3>Timeline</h3>
<div class="controls"><input id="q" type="search" placeholder="filter tasks…" aria-label="filter tasks">
<select id="st" aria-label="status"><option value="">every status</option>{options}</select>
<button id="open" type="button">expand all</button><button id="close" type="button">collapse all</button>
<span id="shown" class="muted"></span></div>
<div class="legend">{legend}</div>
<div class="timeline">
<div class="axis"><span></span><span></span><span class="track">{ticks}</span></div>
{"".join(sections)}
<div class="overlay">{overlay}</div>
</div>
<p class="muted">Written by agentctl from {esc(log.run.path)} at {esc(store.now_iso())}. Click a task for its
model, tokens, cost, the context packet it received and the report it returned.</p>
<script>{_JS}</script>
</body></html>
"""


# --------------------------------------------------------------------------- the command


def command(state_dir: store.StateDir, run_id: str | None, output: Path | None) -> Path:
    """Write the report; returns its path."""
    from agentctl.views import live_status

    run = resolve_run(state_dir, run_id)
    log = RunLog.read(run)
    status, _driver = live_status(run, log.state)
    page = render(log, status)
    dest = output if output is not None else run.path / "report.html"
    store.write_atomic(dest, page.encode("utf-8"), durable=False)
    return dest
