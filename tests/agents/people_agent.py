"""A test agent for approvals, takeover, cancel and failure categories (stdlib only).

    people_agent.py LOG MODE [ARG]

Every execution first appends one JSON line to LOG (O_APPEND, one write): task, attempt,
pid, mode. Modes::

    ok                  report COMPLETE, output {"task", "attempt"}
    plan N              report COMPLETE, output {"items": ["i0", ..., "i<N-1>"]}
    blocked REASON      report BLOCKED with that blocker
    failed              report FAILED
    bad-schema          report COMPLETE whose output breaks the skill's schema ({"n": "x"})
    not-json            write text that is not JSON to $AGENTCTL_OUTPUT
    exit N              write no report, print to stderr, exit N
    fail-unless FILE    like `exit 3` unless FILE exists, else like `ok`
    sleep S             sleep S seconds without a beat, then report COMPLETE
    wait FILE           beat (touch $AGENTCTL_HEARTBEAT) until FILE exists, then COMPLETE
    silent              touch the heartbeat once, then sleep without a beat (until killed)
    spawn PIDS          start a child that sleeps, append {"agent", "child"} pids to PIDS,
                        then beat forever (until killed)

The report is written to a temp file and renamed onto $AGENTCTL_OUTPUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def append_line(path: str, obj: dict[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(obj, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def beat() -> None:
    path = os.environ.get("AGENTCTL_HEARTBEAT")
    if path:
        try:
            os.utime(path)
        except FileNotFoundError:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def write_report(data: object, *, raw: str | None = None) -> None:
    out = os.environ["AGENTCTL_OUTPUT"]
    tmp = f"{out}.{os.getpid()}.part"
    with open(tmp, "w") as f:
        f.write(raw if raw is not None else json.dumps(data))
    os.replace(tmp, out)


def main() -> int:
    log, mode = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    task = os.environ["AGENTCTL_TASK_ID"]
    attempt = int(os.environ["AGENTCTL_ATTEMPT"])
    append_line(log, {"task": task, "attempt": attempt, "pid": os.getpid(), "mode": mode})
    done = {"status": "COMPLETE", "summary": f"{task} attempt {attempt} done",
            "output": {"task": task, "attempt": attempt}}
    if mode == "ok":
        write_report(done)
    elif mode == "plan":
        write_report({"status": "COMPLETE", "summary": f"{arg} items",
                      "output": {"items": [f"i{i}" for i in range(int(arg))]}})
    elif mode == "blocked":
        write_report({"status": "BLOCKED", "summary": f"{task} cannot go on",
                      "blockers": [arg]})
    elif mode == "failed":
        write_report({"status": "FAILED", "summary": f"{task} gave up"})
    elif mode == "bad-schema":
        write_report({"status": "COMPLETE", "summary": "wrong shape", "output": {"n": "x"}})
    elif mode == "not-json":
        write_report(None, raw="this is not json {")
    elif mode == "exit":
        print(f"{task}: giving up with exit {arg}", file=sys.stderr)
        return int(arg)
    elif mode == "fail-unless":
        if not os.path.exists(arg):
            print(f"{task}: {arg} is missing", file=sys.stderr)
            return 3
        write_report(done)
    elif mode == "sleep":
        time.sleep(float(arg))
        write_report(done)
    elif mode == "wait":
        deadline = time.monotonic() + 120
        while not os.path.exists(arg) and time.monotonic() < deadline:
            beat()
            time.sleep(0.05)
        write_report(done)
    elif mode == "silent":
        beat()
        time.sleep(600)
    elif mode == "spawn":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        append_line(arg, {"agent": os.getpid(), "child": child.pid})
        while True:
            beat()
            time.sleep(0.05)
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
