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

The goals (issue 3, item 9): command tasks within 1.5x of the spawn floor; no-op tasks at
0.15 ms/task of overhead or less (LangGraph with its SQLite checkpointer measured 1.3-1.6 ms/task
on the same waves on the development machine).
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
                   task_body: str) -> None:
    """``n_tasks`` tasks in ``n_waves`` waves; each task needs every task of the wave before."""
    sizes = [n_tasks // n_waves + (1 if w < n_tasks % n_waves else 0) for w in range(n_waves)]
    lines = [f"name: {name}", f"limits: {{concurrency: {concurrency}}}", "tasks:"]
    prev: list[str] = []
    for w, size in enumerate(sizes):
        ids = [f"w{w}-t{i}" for i in range(size)]
        needs = f", needs: [{', '.join(prev)}]" if prev else ""
        lines += [f"  {tid}: {{{task_body}{needs}}}" for tid in ids]
        prev = ids
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Scenario:
    name: str
    task_body: str  # the YAML flow-mapping fields of each task
    note: str = ""


SCENARIOS = [
    Scenario("command", 'command: ["true"]', "the command runner spawning `true`"),
    Scenario("noop", "runner: noop", "the in-process no-op runner"),
    # llm (issue 4, item 9) goes here: Scenario("llm", "model: offline/...") at its own
    # concurrency (16), with its floor -- a plain asyncio loop of the same litellm calls in this
    # process -- measured next to floor (a) in main(); see the placeholder in main().
]


# ---------------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float
    rss_kb: int
    rc: int
    cpu: float = 0.0  # user + system seconds of the child and the children it reaped
    stats: dict[str, int] = field(default_factory=dict)


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


def run_engine(pipeline: Path, work: Path, tag: str) -> Sample:
    state = work / f"state-{tag}"
    stats = work / f"stats-{tag}.json"
    argv = [PY, "-m", "agentctl", "run", str(pipeline), "--state-dir", str(state)]
    s = run_child(argv, agentctl_env(stats), work / f"stderr-{tag}.txt")
    if s.rc != 0:
        tail = (work / f"stderr-{tag}.txt").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench: `{shlex.join(argv)}` exited {s.rc}:\n{tail}")
    try:
        s.stats = json.loads(stats.read_text())
    except (OSError, ValueError):
        s.stats = {}  # an agentctl without AGENTCTL_STATS_FILE: fsyncs are not known
    shutil.rmtree(state, ignore_errors=True)  # 1,000 task dirs per run add up
    return s


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
    args = ap.parse_args()
    n, k = args.tasks, args.repeat
    if n < args.waves or args.waves < 1 or n < 2:
        ap.error("need --tasks >= --waves >= 1 and --tasks >= 2")

    print("$ " + shlex.join([os.path.relpath(PY, ROOT) if PY.startswith(str(ROOT)) else PY,
                              os.path.relpath(__file__, ROOT), *sys.argv[1:]]))
    work = Path(tempfile.mkdtemp(prefix="agentctl-bench-", dir=args.dir))
    try:
        _bench(args, n, k, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, n: int, k: int, work: Path) -> None:
    per_wave = n / args.waves
    print(f"{n} tasks in {args.waves} waves of {per_wave:g}, each needing every task of the wave "
          f"before; concurrency {args.concurrency}; median of {k} (min-max)")
    print(f"python {platform.python_version()} on {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} CPUs; files in {work}; load average {_load()} at the start")

    pipelines = {}
    for sc in SCENARIOS:
        p = work / f"{sc.name}.yaml"
        write_pipeline(p, f"bench-{sc.name}", n, args.waves, args.concurrency, sc.task_body)
        pipelines[sc.name] = p
    one = work / "one.yaml"
    write_pipeline(one, "bench-one", 1, 1, 1, "runner: noop")

    # Floors and runs are interleaved per repetition, so drift on the machine hits all alike.
    start_s, fixed_s, fa, fa_pipes, fb = [], [], [], [], []
    runs: dict[str, list[Sample]] = {sc.name: [] for sc in SCENARIOS}
    loads: list[float] = []
    for i in range(k):
        start_s.append(startup(work))
        fixed_s.append(run_engine(one, work, f"one-{i}").wall)
        fa.append(floor_spawn(n, args.concurrency))
        fa_pipes.append(floor_spawn(n, args.concurrency, like_runner=True))
        fb.append(floor_fsync(n, work))
        loads.append(load_time(pipelines[SCENARIOS[0].name]))
        for sc in SCENARIOS:
            runs[sc.name].append(run_engine(pipelines[sc.name], work, f"{sc.name}-{i}"))
        # llm (issue 4, item 9): measure the plain-asyncio litellm floor here, beside (a).
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
    print(f"      not a floor: load_pipeline() of this file   {spread(loads)} s "
          "(parse, validate, plan; inside every run below)")

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
        if sc.name == "command":
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
    print("goals")
    cmd = med([s.wall for s in runs["command"]])
    noop = med([s.wall for s in runs["noop"]])
    ratio = (cmd - st) / a
    print(f"  command / floor: (wall - startup) / floor (a)        {ratio:.2f}x   (goal <= 1.5x)")
    print(f"                   (wall - startup) / (floor a + b)    {(cmd - st) / (a + b):.2f}x")
    print(f"                   wall / (floor a + startup)          {cmd / (a + st):.2f}x")
    print(f"  noop overhead:   (wall - startup) / tasks            {(noop - st) / n * 1e3:.3f} ms/task"
          "   (goal <= 0.15; LangGraph + SQLite checkpointer: 1.3-1.6)")
    print(f"                   (wall - 1-task run) / (tasks - 1)   {(noop - fixed) / (n - 1) * 1e3:.3f} ms/task")
    # llm (issue 4, item 9): print run / plain-asyncio-litellm floor (goal < 1.3) and the
    # startup of `agentctl run` with and without llm tasks here.


if __name__ == "__main__":
    main()
