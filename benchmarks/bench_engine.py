"""The engine's overhead, beside floors measured in the same run. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_engine.py [--tasks 1000] [--waves 10] [--concurrency 8]
                                                [--repeat 3] [--dir DIR] [--no-strace]

What it runs, each ``--repeat`` times (the median is printed, with the spread):

- a generated pipeline of ``--tasks`` tasks in ``--waves`` waves, each task needing every task of
  the wave before, at ``--concurrency``; once with ``command: ["true"]`` (the ``command`` runner)
  and once with ``runner: noop`` (in-process, completes at once). Each goes through the real
  engine in a child process: ``python -m agentctl run PIPELINE --state-dir TMP`` with
  ``AGENTCTL_PLAIN=1`` and stdout to /dev/null, exactly as a user would start it;
- floors, in this process: (a) spawning ``true`` ``--tasks`` times at the same concurrency with
  ``asyncio.create_subprocess_exec`` (and, for information, the same with the pipes and the new
  session the command runner needs); (b) appending plus fsyncing one small record per task to a
  file next to the state dir; (c) interpreter + agentctl startup (``python -m agentctl --help``),
  and the fixed cost of a whole run of one no-op task.

How it measures:

- wall time: from spawning the driver to reaping it;
- peak memory: ``ru_maxrss`` of the driver, from ``os.wait4`` on it (so one run's figure is not
  mixed with another's, as ``RUSAGE_CHILDREN`` would be);
- fsyncs: the driver writes its WAL counters to ``$AGENTCTL_STATS_FILE`` when a run ends (one
  fsync per WAL batch: group commit). When ``strace`` is available, one extra untimed run per
  scenario counts every fsync/fdatasync the driver makes (snapshot, directories, WAL).

The goals (issue 3, item 9): command tasks within 1.5x of the floor, which the issue defines
as both (a) and (b): spawning ``true`` at the concurrency, and appending plus fsyncing one
record per task (the ratio to (a) alone is printed too); no-op tasks at
0.15 ms/task of overhead or less (LangGraph with its SQLite checkpointer measured 1.3-1.6 ms/task
on the same waves on the development machine).

llm tasks (issue 4, item 9; ``bench_llm`` at the end, skip with ``--no-llm``, only them with
``--only-llm``): ``--tasks`` ``offline/echo`` tasks at ``--llm-concurrency`` (16) through the
whole engine and llm runner, against a plain asyncio loop in this process of the very litellm
calls that run made; once per ``--llm-latency`` of the offline model. Goal: under 1.3x. And a
whole run of one task with and without llm tasks: what importing litellm adds to a run's
start; and what the disk charges at the moment for the files an llm attempt makes. litellm
runs in the model host process (``agentctl/runners/modelhost.py``), so the driver's own CPU
is the engine's cost per llm task and the host's is litellm's; for the instant model one more
run per round has litellm in the driver (``AGENTCTL_MODEL_HOST=0``), as before the host, for
the comparison in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# ---------------------------------------------------------------------------------- pipelines


def write_pipeline(path: Path, name: str, n_tasks: int, n_waves: int, concurrency: int,
                   task_body: str, *, pattern: bool = False) -> None:
    """``n_tasks`` tasks in ``n_waves`` waves; each task needs every task of the wave before:
    listed by name (90,900 names for 1,000 tasks, a 650 KB file), or with ``pattern`` as one
    glob (``needs: ["w3-*"]``, which agentctl expands at load time to the same names)."""
    sizes = [n_tasks // n_waves + (1 if w < n_tasks % n_waves else 0) for w in range(n_waves)]
    lines = [f"name: {name}", f"limits: {{concurrency: {concurrency}}}", "tasks:"]
    prev: list[str] = []
    for w, size in enumerate(sizes):
        ids = [f"w{w}-t{i}" for i in range(size)]
        if pattern:
            needs = f', needs: ["w{w - 1}-*"]' if prev else ""
        else:
            needs = f", needs: [{', '.join(prev)}]" if prev else ""
        lines += [f"  {tid}: {{{task_body}{needs}}}" for tid in ids]
        prev = ids
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Scenario:
    name: str
    task_body: str  # the YAML flow-mapping fields of each task
    note: str = ""
    pattern: bool = False  # needs written as one glob per task instead of 100 names


SCENARIOS = [
    Scenario("command", 'command: ["true"]', "the command runner spawning `true`; needs by name"),
    Scenario("noop", "runner: noop", "the in-process no-op runner; needs by name"),
    Scenario("command-glob", 'command: ["true"]', "the same, needs as one pattern", pattern=True),
    Scenario("noop-glob", "runner: noop", "the same, needs as one pattern", pattern=True),
    # llm tasks have their own concurrency, floor and startup figures: bench_llm(), at the end.
]


# ---------------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float
    rss_kb: int
    rc: int
    cpu: float = 0.0  # user + system seconds of the child and the children it reaped
    stats: dict[str, float] = field(default_factory=dict)


def run_child(argv: list[str], env: dict[str, str], stderr_path: Path) -> Sample:
    """Run ``argv`` with stdout to /dev/null; wall time and peak RSS from ``wait4``."""
    with open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, env=env, cwd=ROOT)
        _pid, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    return Sample(wall, usage.ru_maxrss, p.returncode, usage.ru_utime + usage.ru_stime)


def agentctl_env(stats_file: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, AGENTCTL_PLAIN="1")
    if stats_file is not None:
        env["AGENTCTL_STATS_FILE"] = str(stats_file)
    return env


def run_engine(pipeline: Path, work: Path, tag: str,
               span: tuple[str, str] = ("attempt_started", "run_ended"),
               env: dict[str, str] | None = None) -> Sample:
    """One run of the engine as a user starts it; ``span``: the WAL record types whose stamps
    give the run's own clock (by default its first attempt logged to its end logged, i.e. the
    engine at work, without the interpreter's start, imports, the parse of the pipeline file,
    or making the run directory). ``env``: more environment for the driver."""
    state = work / f"state-{tag}"
    stats = work / f"stats-{tag}.json"
    argv = [PY, "-m", "agentctl", "run", str(pipeline), "--state-dir", str(state)]
    s = run_child(argv, {**agentctl_env(stats), **(env or {})}, work / f"stderr-{tag}.txt")
    if s.rc != 0:
        tail = (work / f"stderr-{tag}.txt").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench: `{shlex.join(argv)}` exited {s.rc}:\n{tail}")
    try:
        s.stats = json.loads(stats.read_text())
    except (OSError, ValueError):
        s.stats = {}  # an agentctl without AGENTCTL_STATS_FILE: fsyncs are not known
    seconds = wal_span(state, *span)
    if seconds is not None:
        s.stats["span_s"] = seconds
    # The state dir stays until the end (the whole work dir goes then): on ext4, deleting a
    # run's ~5,000 files between runs made each next run's system time grow (0.4 s -> 3 s
    # over six noop runs), which measured the deletions, not the engine.
    return s


def wal_span(state: Path, first: str, last: str) -> float | None:
    """Seconds from the first record of type ``first`` to the last of type ``last`` in the
    run's WAL (their ``at`` stamps: milliseconds)."""
    from datetime import datetime

    stamps: dict[str, list[float]] = {first: [], last: []}
    for wal in state.glob("runs/*/wal.jsonl"):
        for line in wal.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") in stamps:
                at = datetime.fromisoformat(rec["at"].replace("Z", "+00:00")).timestamp()
                stamps[rec["type"]].append(at)
    if stamps[first] and stamps[last]:
        return max(stamps[last]) - min(stamps[first])
    return None


def strace_fsyncs(pipeline: Path, work: Path) -> tuple[int, int | None] | None:
    """Every fsync/fdatasync of one extra, untimed run, counted by strace, and that run's WAL
    batches (batching differs from the timed runs: tracing slows the driver). None without
    strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    out = work / "strace.txt"
    state = work / "state-strace"
    stats = work / "stats-strace.json"
    argv = [PY, "-m", "agentctl", "run", str(pipeline), "--state-dir", str(state)]
    for extra in (["--seccomp-bpf"], []):  # seccomp-bpf: stop only on the traced calls
        cmd = [strace, *extra, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), *argv]
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=agentctl_env(stats), cwd=ROOT).returncode
        shutil.rmtree(state, ignore_errors=True)
        if rc == 0 and out.exists():
            break
    else:
        return None
    calls = 0
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync") and parts[3].isdigit():
            calls += int(parts[3])
    try:
        wal = int(json.loads(stats.read_text())["wal_fsyncs"])
    except (OSError, ValueError, KeyError):
        wal = None
    return calls, wal


LOAD_SNIPPET = """
import sys, time
from agentctl.definitions import load_pipeline
t = time.perf_counter()
load_pipeline(sys.argv[1])
print(time.perf_counter() - t)
"""


def load_time(pipeline: Path) -> float:
    """``load_pipeline`` alone (parse, validate, plan), in a fresh interpreter, imports excluded:
    the part of a run's fixed cost that grows with the size of the pipeline file."""
    out = subprocess.run([PY, "-c", LOAD_SNIPPET, str(pipeline)], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    return float(out.strip().splitlines()[-1])


async def _spawn_many(n: int, concurrency: int, *, like_runner: bool) -> None:
    sem = asyncio.Semaphore(concurrency)
    pipe = asyncio.subprocess.PIPE if like_runner else asyncio.subprocess.DEVNULL

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                "true", stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                start_new_session=like_runner)
            if like_runner:
                await proc.communicate()
            else:
                await proc.wait()

    await asyncio.gather(*(one() for _ in range(n)))


def floor_spawn(n: int, concurrency: int, *, like_runner: bool = False) -> float:
    t0 = time.perf_counter()
    asyncio.run(_spawn_many(n, concurrency, like_runner=like_runner))
    return time.perf_counter() - t0


def floor_fsync(n: int, work: Path) -> float:
    """Append plus fsync one small record per task: the naive durable log, one fsync each."""
    path = work / "floor.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            rec = json.dumps({"seq": i + 1, "type": "attempt_ended", "task": f"t{i}"}) + "\n"
            os.write(fd, rec.encode())
            os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()


def startup(work: Path) -> float:
    return run_child([PY, "-m", "agentctl", "--help"], agentctl_env(), work / "stderr-help.txt").wall


def repeat(k: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(k)]


# ---------------------------------------------------------------------------------- printing


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], unit: float = 1.0, fmt: str = ".3f") -> str:
    return f"{med(xs) * unit:{fmt}} ({min(xs) * unit:{fmt}}-{max(xs) * unit:{fmt}})"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--waves", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is printed")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the state dirs go (default: a temp dir); fsync cost depends on it")
    ap.add_argument("--no-strace", action="store_true", help="skip the strace count of all fsyncs")
    ap.add_argument("--llm-concurrency", type=int, default=16, help="concurrency of the llm runs")
    ap.add_argument("--llm-waves", type=int, default=1,
                    help="waves of the llm runs (default 1: a wave barrier idles slots the "
                         "floor's flat loop does not, which is not overhead)")
    ap.add_argument("--llm-latency", default="0ms,50ms",
                    help="reply latencies of the offline model, one llm run each (default 0ms,50ms)")
    ap.add_argument("--no-llm", action="store_true", help="skip the llm runs")
    ap.add_argument("--only-llm", action="store_true",
                    help="only the llm runs (no command and no-op runs, no their floors)")
    args = ap.parse_args()
    n, k = args.tasks, args.repeat
    if n < args.waves or args.waves < 1 or n < 2:
        ap.error("need --tasks >= --waves >= 1 and --tasks >= 2")
    if args.no_llm and args.only_llm:
        ap.error("--no-llm and --only-llm leave nothing to run")

    print("$ " + shlex.join([os.path.relpath(PY, ROOT) if PY.startswith(str(ROOT)) else PY,
                              os.path.relpath(__file__, ROOT), *sys.argv[1:]]))
    work = Path(tempfile.mkdtemp(prefix="agentctl-bench-", dir=args.dir))
    try:
        _bench(args, n, k, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, n: int, k: int, work: Path) -> None:
    if args.only_llm:
        print(f"python {platform.python_version()} on {platform.system()} {platform.release()}, "
              f"{os.cpu_count()} CPUs; files in {work}; load average {_load()} at the start")
        bench_llm(n, args.llm_waves, args.llm_concurrency, k,
                  [x.strip() for x in args.llm_latency.split(",") if x.strip()], work)
        return
    per_wave = n / args.waves
    print(f"{n} tasks in {args.waves} waves of {per_wave:g}, each needing every task of the wave "
          f"before; concurrency {args.concurrency}; median of {k} (min-max)")
    print(f"python {platform.python_version()} on {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} CPUs; files in {work}; load average {_load()} at the start")

    pipelines = {}
    for sc in SCENARIOS:
        p = work / f"{sc.name}.yaml"
        write_pipeline(p, f"bench-{sc.name}", n, args.waves, args.concurrency, sc.task_body,
                       pattern=sc.pattern)
        pipelines[sc.name] = p
    one = work / "one.yaml"
    write_pipeline(one, "bench-one", 1, 1, 1, "runner: noop")

    # Floors and runs are interleaved per repetition, so drift on the machine hits all alike.
    start_s, fixed_s, fa, fa_pipes, fb = [], [], [], [], []
    runs: dict[str, list[Sample]] = {sc.name: [] for sc in SCENARIOS}
    loads: list[float] = []
    loads_glob: list[float] = []
    for i in range(k):
        start_s.append(startup(work))
        fixed_s.append(run_engine(one, work, f"one-{i}").wall)
        fa.append(floor_spawn(n, args.concurrency))
        fa_pipes.append(floor_spawn(n, args.concurrency, like_runner=True))
        fb.append(floor_fsync(n, work))
        loads.append(load_time(pipelines["command"]))
        loads_glob.append(load_time(pipelines["command-glob"]))
        for sc in SCENARIOS:
            runs[sc.name].append(run_engine(pipelines[sc.name], work, f"{sc.name}-{i}"))
    traced = {} if args.no_strace else {sc.name: strace_fsyncs(pipelines[sc.name], work)
                                        for sc in SCENARIOS}

    st, fixed, a, b = med(start_s), med(fixed_s), med(fa), med(fb)
    print(f"(load average {_load()} at the end: other work on the machine inflates wall times)")
    print()
    print("floors (this run)")
    print(f"  (c) startup: python -m agentctl --help         {spread(start_s)} s")
    print(f"      a whole run of 1 noop task                  {spread(fixed_s)} s")
    print(f"  (a) spawn `true` x{n} at {args.concurrency} (asyncio)          "
          f"{spread(fa)} s = {a / n * 1e3:.3f} ms/task")
    print(f"      same, with pipes + new session            {spread(fa_pipes)} s = "
          f"{med(fa_pipes) / n * 1e3:.3f} ms/task")
    print(f"  (b) append + fsync 1 record x{n}              {spread(fb)} s = "
          f"{b / n * 1e3:.3f} ms/record")
    print(f"      not a floor: load_pipeline(), needs by name  {spread(loads)} s "
          f"({pipelines['command'].stat().st_size // 1024} KB; parse, validate, plan: in each run)")
    print(f"                   load_pipeline(), needs as glob {spread(loads_glob)} s "
          f"({pipelines['command-glob'].stat().st_size // 1024} KB)")

    print()
    print("engine runs (python -m agentctl run, AGENTCTL_PLAIN=1, stdout to /dev/null)")
    for sc in SCENARIOS:
        samples = runs[sc.name]
        walls = [s.wall for s in samples]
        wall = med(walls)
        rss = med([s.rss_kb for s in samples]) / 1024
        wal = [s.stats.get("wal_fsyncs") for s in samples]
        print(f"  {sc.name}: {sc.note}")
        print(f"    wall                                 {spread(walls)} s")
        print(f"    CPU of the driver (user+sys)         {spread([s.cpu for s in samples])} s"
              + (" (with its `true` children)" if sc.name == "command" else ""))
        print(f"    per task, (wall - startup)/tasks     {(wall - st) / n * 1e3:.3f} ms")
        print(f"    per task, (wall - 1-task run)/(tasks-1) {(wall - fixed) / (n - 1) * 1e3:.3f} ms")
        spans = [s.stats["span_s"] for s in samples if "span_s" in s.stats]
        if spans:
            print(f"    in the run: first start -> end       {spread(spans)} s = "
                  f"{med(spans) / n * 1e3:.3f} ms/task")
        if sc.name.startswith("command"):
            print(f"    per task, (wall - floor a - startup)/tasks  {(wall - a - st) / n * 1e3:.3f} ms")
        if all(isinstance(w, int) for w in wal):
            recs = med([s.stats.get("wal_records", 0) for s in samples])
            print(f"    WAL fsyncs (batches) per task        {med(wal) / n:.3f}  "
                  f"({med(wal):g} batches, {recs:g} records)")
        else:
            print("    WAL fsyncs per task                  n/a (no AGENTCTL_STATS_FILE support)")
        tr = traced.get(sc.name)
        if tr is not None:
            wal_part = f", {tr[1]} of them WAL batches" if tr[1] is not None else ""
            print(f"    all fsync+fdatasync per task (strace) {tr[0] / n:.3f}  "
                  f"({tr[0]} in one extra run{wal_part})")
        print(f"    peak RSS of the driver               {rss:.1f} MB")

    print()
    print("goals (whole runs: wall, from spawning `python -m agentctl run` to reaping it;")
    print("       in the run: from the first attempt logged to the run's end logged, WAL stamps)")

    def span(name: str) -> float:
        return med([s.stats.get("span_s", float("nan")) for s in runs[name]])

    for suffix, how in (("", "needs by name"), ("-glob", "needs as one pattern")):
        cmd = med([s.wall for s in runs["command" + suffix]])
        noop = med([s.wall for s in runs["noop" + suffix]])
        print(f"  {how}:")
        # The floor is both: spawning `true` at the concurrency, and appending plus
        # fsyncing one record per task. (a) alone is printed too: the stricter reading.
        print(f"    command / floor (a + b): in the run               {span('command' + suffix) / (a + b):.2f}x   (goal <= 1.5x)")
        print(f"                         (wall - startup)              {(cmd - st) / (a + b):.2f}x")
        print(f"    command / (a) alone: in the run                    {span('command' + suffix) / a:.2f}x")
        print(f"                         (wall - startup)              {(cmd - st) / a:.2f}x")
        print(f"    noop overhead:       (wall - startup) / tasks      {(noop - st) / n * 1e3:.3f} ms/task"
              "   (goal <= 0.15; LangGraph + SQLite checkpointer: 1.3-1.6)")
        print(f"                         (wall - 1-task run)/(tasks-1) {(noop - fixed) / (n - 1) * 1e3:.3f} ms/task")
        print(f"                         in the run / tasks            {span('noop' + suffix) / n * 1e3:.3f} ms/task")
    if not args.no_llm:
        bench_llm(n, args.llm_waves, args.llm_concurrency, k,
                  [x.strip() for x in args.llm_latency.split(",") if x.strip()], work)


# ---------------------------------------------------------------------------------- llm tasks
# Issue 4, item 9. ``--tasks`` offline llm tasks at ``--llm-concurrency`` through the whole
# runner (the engine in a child process, as a user starts it), against the floor: a plain
# asyncio loop, in this process, of the very litellm calls that run made (read back from its
# exchange.json files: same model, messages and parameters). Once with replies at once
# (``offline/echo``: every cost of ours shows), once with a reply latency (``?latency=``: a
# model that takes any time at all). And what llm tasks add to a run's startup.

LLM_SKILL = """\
---
name: bench
description: Answers one benchmark task with a small structured report. Use in benchmarks.
metadata:
  agentctl.output: assets/output.schema.json
---
You answer one task of a benchmark. Read your inputs and the report you are given, and reply
with the report asked for.
"""
LLM_SCHEMA = {"type": "object", "required": ["answer", "items"], "properties": {
    "answer": {"type": "string", "minLength": 1},
    "items": {"type": "array", "items": {"type": "object", "required": ["id", "score"],
                                         "properties": {"id": {"type": "string"},
                                                        "score": {"type": "number", "minimum": 0}}}}}}


def write_llm_pipeline(path: Path, name: str, n_tasks: int, n_waves: int, concurrency: int,
                       model: str) -> None:
    """``n_tasks`` llm tasks in ``n_waves`` waves; a task needs its namesake in the wave before
    (bounded context: one report in each prompt). The skill goes in ``skills/`` beside it."""
    skill = path.parent / "skills" / "bench"
    (skill / "assets").mkdir(parents=True, exist_ok=True)
    (skill / "SKILL.md").write_text(LLM_SKILL)
    (skill / "assets" / "output.schema.json").write_text(json.dumps(LLM_SCHEMA))
    per = -(-n_tasks // n_waves)
    lines = [f"name: {name}", f"defaults: {{model: {json.dumps(model)}, retries: 0}}",
             f"limits: {{concurrency: {concurrency}}}", "tasks:"]
    for i in range(n_tasks):
        w, j = divmod(i, per)
        needs = f", needs: [w{w - 1}-t{j}]" if w else ""
        lines.append(f"  w{w}-t{j}: {{skill: bench, with: {{n: {i}}}{needs}}}")
    path.write_text("\n".join(lines) + "\n")


def run_llm_engine(pipeline: Path, work: Path, tag: str,
                   env: dict[str, str] | None = None) -> tuple[Sample, list[dict[str, object]]]:
    """One engine run, and the litellm requests its runner made (from exchange.json). Its
    own clock: from its first response logged to its last attempt ended, i.e. the tasks'
    work without the interpreter's start and litellm's import."""
    s = run_engine(pipeline, work, tag, span=("llm_call", "attempt_ended"), env=env)
    state = work / f"state-{tag}"
    requests: list[dict[str, object]] = []
    for path in sorted(state.glob("runs/*/tasks/*/attempt-*.exchange.json")):
        ex = json.loads(path.read_text())
        for call in ex["calls"]:  # the first `sent_messages` of the conversation, + params
            requests.append({**call["params"], "messages": ex["messages"][:call["sent_messages"]]})
    return s, requests  # the state dir stays until the end: see run_engine


def floor_litellm(requests: list[dict[str, object]], concurrency: int) -> tuple[float, float]:
    """The same ``acompletion`` calls (and the kwargs the runner adds), plain asyncio, nothing
    else: (wall, CPU) seconds. The offline models' prices are registered first, as the runner
    does: without a price every call's cost lookup fails inside litellm, which made the calls
    ~20% slower (1,000 calls: 1.80-2.01 s against 1.50-1.71 s, 9 of each in 3 processes) and
    the floor depend on whether anything in this process had registered it yet."""
    from agentctl import offline
    from agentctl.runners import litellm_client

    litellm = litellm_client.load()
    for model in {str(r["model"]) for r in requests}:
        if model.startswith(offline.PROVIDER + "/"):
            offline.price(litellm, model)
    meta = {"agentctl": {"task": "t", "attempt": 1, "turn": 0, "try": 0}}

    async def loop() -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(req: dict[str, object]) -> None:
            async with sem:
                await litellm.acompletion(**req, max_retries=0, metadata=meta)

        try:
            await asyncio.gather(*(one(r) for r in requests))
        finally:
            await litellm_client.aclose()

    t0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(loop())
    return time.perf_counter() - t0, time.process_time() - c0


def runner_alone(pipeline: Path, concurrency: int, work: Path, tag: str) -> tuple[float, float]:
    """The llm runner without the engine: ``LLMRunner.run`` on one attempt per task of
    ``pipeline`` (independent tasks), in this process, at ``concurrency``; calls are "logged"
    to a list. What the runner itself adds to the floor. (wall, CPU of this process: the
    model host's is not in it) seconds."""
    from agentctl import prompts
    from agentctl.definitions import load_pipeline
    from agentctl.runners import llm
    from agentctl.runners.base import Attempt
    from agentctl.runners.modelhost import HostClient

    defn = load_pipeline(pipeline)
    logged: list[dict[str, object]] = []

    async def record(call: dict[str, object]) -> None:
        logged.append(call)

    attempts = []
    for tid in defn.pipeline.tasks:
        spec = defn.task(tid)
        skill = defn.skills[spec.skill] if spec.skill else None
        pkt = prompts.packet("bench", tid, 1, dict(spec.with_), {})
        tdir = work / f"runner-alone-{tag}" / tid
        tdir.mkdir(parents=True, exist_ok=True)
        model = defn.model_of(tid)
        attempts.append(Attempt(
            run_id="bench", task_id=tid, attempt=1, idempotency_key="k", spec=spec, skill=skill,
            model=model, models=[model] if model else [], workspace=work, workdir=work,
            task_dir=tdir, input_path=tdir / "input.json", output_path=tdir / "report.json",
            prompt_path=None, heartbeat_path=tdir / "beat", packet=pkt,
            prompt=prompts.rendered_prompt(pkt, skill) if skill else None, argv=None, env={},
            beat=lambda: None, record_call=record))

    models = llm.client()
    if isinstance(models, HostClient):  # its litellm import is not the runner's work
        asyncio.run(models.status())

    async def loop() -> None:
        runner, sem = llm.LLMRunner(), asyncio.Semaphore(concurrency)

        async def one(a: Attempt) -> None:
            async with sem:
                out = await runner.run(a)
                if out.report is None:
                    raise SystemExit(f"bench: the llm runner failed: {out.category}: {out.message}")

        try:
            await asyncio.gather(*(one(a) for a in attempts))
        finally:
            await llm.aclose()

    t0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(loop())
    return time.perf_counter() - t0, time.process_time() - c0


def floor_attempt_files(n: int, work: Path, tag: str) -> float:
    """Not a floor of the issue's, but what this disk charges right now for the files an llm
    attempt makes (``tasks/<id>/``; input.json, attempt-1.exchange.json and output.json, each
    temp file + rename, with the sizes of this benchmark's), ``n`` times, alone: seconds. On
    ext4 without a journal (this machine), making a file after many were deleted costs up to
    ten times more for a few minutes (the allocator skips recently freed inodes)."""
    from agentctl.store import write_atomic

    root = work / f"files-floor-{tag}"
    root.mkdir()
    sizes = (("input.json", 100), ("attempt-1.exchange.json", 3300), ("output.json", 210))
    t0 = time.perf_counter()
    for i in range(n):
        d = root / f"t{i}"
        os.mkdir(d, 0o700)
        for name, size in sizes:
            write_atomic(d / name, b"x" * size, durable=False)
    return time.perf_counter() - t0


def bench_llm(n: int, waves: int, concurrency: int, k: int, latencies: list[str], work: Path) -> None:
    """Print the llm runner's figures (called at the end of ``_bench``)."""
    from agentctl.runners import litellm_client

    t0 = time.perf_counter()
    litellm_client.load()
    import_s = time.perf_counter() - t0
    noop_one = work / "noop-one.yaml"
    write_pipeline(noop_one, "bench-noop-one", 1, 1, 1, "runner: noop")
    models = {lat: "offline/echo" + (f"?latency={lat}" if lat not in ("", "0", "0ms") else "")
              for lat in latencies}
    big, one = {}, {}
    for lat, model in models.items():
        big[lat], one[lat] = work / f"llm-{lat}.yaml", work / f"llm-one-{lat}.yaml"
        write_llm_pipeline(big[lat], "bench-llm", n, waves, concurrency, model)
        write_llm_pipeline(one[lat], "bench-llm-one", 1, 1, 1, model)
    floor_litellm(run_llm_engine(one[latencies[0]], work, "warm")[1], 1)  # litellm's lazy imports

    start_noop: list[Sample] = []
    start_llm: list[Sample] = []
    runs: dict[str, list[Sample]] = {lat: [] for lat in latencies}
    floors: dict[str, list[tuple[float, float]]] = {lat: [] for lat in latencies}
    alone: dict[str, list[tuple[float, float]]] = {lat: [] for lat in latencies}
    # For the instant model: the same run with litellm in the driver (no model host).
    instant = next((lat for lat in latencies if lat in ("", "0", "0ms")), None)
    inline: list[Sample] = []
    files: list[float] = []
    for i in range(k):  # interleaved, so drift on the machine hits all alike
        files.append(floor_attempt_files(n, work, str(i)))
        start_noop.append(run_engine(noop_one, work, f"noop-one-{i}"))
        start_llm.append(run_llm_engine(one[latencies[0]], work, f"llm-one-{i}")[0])
        for lat in latencies:
            s, requests = run_llm_engine(big[lat], work, f"llm-{lat}-{i}")
            if len(requests) != n:
                raise SystemExit(f"bench: expected {n} llm calls, the run made {len(requests)}")
            runs[lat].append(s)
            floors[lat].append(floor_litellm(requests, concurrency))
            if waves == 1:
                alone[lat].append(runner_alone(big[lat], concurrency, work, f"{lat}-{i}"))
            if lat == instant:
                inline.append(run_llm_engine(big[lat], work, f"llm-inline-{i}",
                                             {"AGENTCTL_MODEL_HOST": "0"})[0])

    one_wall = med([s.wall for s in start_llm])
    one_cpu = med([s.cpu for s in start_llm])
    one_self = med([self_cpu(s) for s in start_llm])
    noop_wall = med([s.wall for s in start_noop])
    scale = (n - 1) / n  # the 1-task run's task is not in (run - 1-task run)
    print()
    shape = ("independent" if waves == 1 else
             f"in {waves} waves, each needing one task of the wave before")
    print(f"llm tasks: {n} offline llm tasks, {shape}; concurrency {concurrency}; median of {k} "
          "(min-max)")
    print(f"  import litellm (in this process, once)          {import_s:.3f} s")
    print(f"  a whole run of 1 noop task (never imports it)   {spread([s.wall for s in start_noop])} s")
    print(f"  a whole run of 1 llm task (imports it)          {spread([s.wall for s in start_llm])} s "
          f"(CPU, driver and model host {spread([s.cpu for s in start_llm])} s)")
    print(f"  this disk now: an llm attempt's files alone (1 directory, 3 small files), x{n}  "
          f"{spread(files)} s = {med(files) / n * 1e3:.3f} ms/task")
    ratios = []
    for lat, model in models.items():
        spans = [float(s.stats.get("span_s", 0.0)) for s in runs[lat]]
        walls = [s.wall for s in runs[lat]]
        cpus = [s.cpu for s in runs[lat]]
        selfs = [self_cpu(s) for s in runs[lat]]
        fw = [f[0] for f in floors[lat]]
        fc = [f[1] for f in floors[lat]]
        wall_ratio = (med(walls) - one_wall) / (med(fw) * scale)
        cpu_ratio = (med(cpus) - one_cpu) / (med(fc) * scale)
        span_ratio = med(spans) / (med(fw) * scale)
        ratios.append((model, span_ratio, wall_ratio, cpu_ratio))
        rss = [float(s.stats.get("peak_rss_kb", s.rss_kb)) for s in runs[lat]]
        print(f"  {model}")
        print(f"    engine run, {n} tasks                      {spread(walls)} s "
              f"(CPU {spread(cpus)} s, driver's peak RSS {med(rss) / 1024:.0f} MB)")
        print(f"    in the run: first response logged -> last attempt ended  {spread(spans)} s")
        print(f"    floor: the same {n} acompletion calls        {spread(fw)} s "
              f"(CPU {spread(fc)} s) = {med(fw) / n * 1e3:.3f} ms/call")
        print(f"    per task, (run - 1-task run)/(tasks - 1)    {(med(walls) - one_wall) / (n - 1) * 1e3:.3f} ms "
              f"(floor {med(fw) / n * 1e3:.3f} ms)")
        # The driver's CPU is the engine's work (litellm is in the host); the rest is the host's.
        driver_ms = (med(selfs) - one_self) / (n - 1) * 1e3
        host_ms = ((med(cpus) - med(selfs)) - (one_cpu - one_self)) / (n - 1) * 1e3
        print(f"    CPU per task: the driver (the engine)       {driver_ms:.3f} ms; "
              f"the model host (litellm) {host_ms:.3f} ms (floor {med(fc) / n * 1e3:.3f} ms)")
        if alone[lat]:
            aw, ac = [a[0] for a in alone[lat]], [a[1] for a in alone[lat]]
            print(f"    the llm runner alone, in this process (no engine)  {spread(aw)} s "
                  f"(CPU {spread(ac)} s) = {med(aw) / med(fw):.2f}x the floor's wall")
        if lat == instant and inline:
            spans_i = [float(s.stats.get("span_s", 0.0)) for s in inline]
            print(f"    litellm in the driver (AGENTCTL_MODEL_HOST=0), in the run  {spread(spans_i)} s "
                  f"= {med(spans_i) / (med(fw) * scale):.2f}x the floor "
                  f"(CPU {spread([s.cpu for s in inline])} s)")
        fsyncs = [s.stats.get("wal_fsyncs") for s in runs[lat]]
        if all(isinstance(f, int) for f in fsyncs):
            print(f"    WAL fsyncs (batches) per task               {med(fsyncs) / n:.3f}")
    print()
    print("goals (llm)")
    for model, span_ratio, wall_ratio, cpu_ratio in ratios:
        print(f"  {model}: run / floor   (goal < 1.3x)")
        print(f"    in-run span / floor x (tasks-1)/tasks                {span_ratio:.2f}x")
        print(f"    (wall - 1-task run) / floor x (tasks-1)/tasks        {wall_ratio:.2f}x")
        print(f"    (CPU, driver + host - 1-task run's) / floor's CPU    {cpu_ratio:.2f}x")
    print(f"  startup, a whole run of 1 task: {one_wall:.3f} s with llm tasks, {noop_wall:.3f} s "
          f"without (+{one_wall - noop_wall:.3f} s: litellm's import, in the model host, begun "
          "at preflight)")


def self_cpu(s: Sample) -> float:
    """The driver's own CPU seconds (its stats file), without its children's (the host's)."""
    return float(s.stats.get("cpu_self_s", s.cpu))


if __name__ == "__main__":
    main()
