"""A test agent for fan-out and review loops (stdlib only).

    wave_agent.py CONFIG ROLE [ARG...]

CONFIG is the harness's JSON file (``exec_log``, ``effects_dir``, ``scratch``). Every
execution appends one JSON line to ``exec_log`` (O_APPEND, one write) with ``event: start``,
and one with ``event: done`` just before it writes its report, so a test can count both.

Roles::

    plan N [bad]        output {"subtasks": [{"name": "part-000", "n": 0}, ...]} (N items);
                        with "bad": {"subtasks": "oops"}, which breaks a planner's schema
    work [hang=N flag=PATH] [fail=I unless=PATH]
                        a fan-out instance: reads item and index from $AGENTCTL_INPUT;
                        while the file `flag` exists, an instance whose index >= `hang`
                        beats and hangs until killed; instance `fail` exits 3 unless the
                        file `unless` exists; otherwise it performs its side effect once
                        per $AGENTCTL_IDEMPOTENCY_KEY (O_EXCL file) and reports
                        {"index", "name", "square"}
    collect             reports what the downstream task received: the instances' indices
    maker MODE          a loop's maker. MODE "build": draft "v1" on iteration 1, then
                        feedback.output.next (it builds on the checker's feedback);
                        MODE "same": always the same draft
    checker PASS_AT     a loop's checker: verdict "pass" when the maker's draft == PASS_AT,
                        else "revise" with next = v<k+1>

The report is written to a scratch file and renamed onto $AGENTCTL_OUTPUT, so it is never torn.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def append_line(path: str, obj: dict[str, Any]) -> None:
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


def main() -> int:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    role, args = sys.argv[2], sys.argv[3:]
    task = os.environ["AGENTCTL_TASK_ID"]
    attempt = int(os.environ["AGENTCTL_ATTEMPT"])
    key = os.environ["AGENTCTL_IDEMPOTENCY_KEY"]
    with open(os.environ["AGENTCTL_INPUT"]) as f:
        packet = json.load(f)
    base = {"task": task, "attempt": attempt, "key": key, "role": role, "pid": os.getpid()}
    append_line(cfg["exec_log"], {**base, "event": "start", "index": packet.get("index"),
                                  "item": packet.get("item"), "loop": packet.get("loop")})

    output: Any
    if role == "plan":
        n = int(args[0])
        bad = len(args) > 1 and args[1] == "bad"
        output = {"subtasks": "oops" if bad else
                  [{"name": f"part-{i:03d}", "n": i} for i in range(n)]}
    elif role == "work":
        index, item = packet["index"], packet["item"]
        opt = dict(a.split("=", 1) for a in args)
        if "fail" in opt and index == int(opt["fail"]) and not os.path.exists(opt["unless"]):
            print(f"instance {index}: {opt['unless']} is missing", file=sys.stderr)
            return 3
        if "hang" in opt and index >= int(opt["hang"]) and os.path.exists(opt["flag"]):
            while True:  # in flight until the driver (or its successor) kills us
                beat()
                time.sleep(0.05)
        try:
            fd = os.open(os.path.join(cfg["effects_dir"], f"{task}__{key}"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # done already under this key: the idempotent answer
        else:
            os.close(fd)
        output = {"index": index, "name": item["name"], "square": item["n"] ** 2}
    elif role == "collect":
        reports = packet["needs"]["work"]["output"]
        output = {"count": len(reports), "indices": [r["output"]["index"] for r in reports],
                  "names": [r["output"]["name"] for r in reports], "with": packet["with"]}
    elif role == "maker":
        loop = packet["loop"]
        if args[0] == "same":
            output = {"draft": "the same draft"}
        elif loop["feedback"] is None:
            output = {"draft": "v1"}
        else:
            output = {"draft": loop["feedback"]["output"]["next"]}
    elif role == "checker":
        draft = packet["loop"]["maker"]["output"]["draft"]
        ok = draft == args[0]
        nxt = f"v{int(draft[1:]) + 1}" if draft[:1] == "v" and draft[1:].isdigit() else draft
        output = {"verdict": "pass" if ok else "revise", "seen": draft, "next": nxt}
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2

    append_line(cfg["exec_log"], {**base, "event": "done", "output": output})
    report = {"status": "COMPLETE", "summary": f"{task} ({role}) attempt {attempt}",
              "output": output}
    scratch = os.path.join(cfg["scratch"], f"{task}.{attempt}.{os.getpid()}.json")
    with open(scratch, "w") as f:
        json.dump(report, f)
    os.replace(scratch, os.environ["AGENTCTL_OUTPUT"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
