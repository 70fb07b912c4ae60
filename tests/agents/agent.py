"""A test agent for agentctl's command runner (stdlib only).

    agent.py CONFIG [TAG]

CONFIG is a JSON file written by the test::

    {"exec_log": path, "effects_dir": path, "scratch": path, "seed": int,
     "default": {behaviour}, "tasks": {task_id: {behaviour}}}

A behaviour (every key optional)::

    sleep: [lo, hi]          seconds, drawn from random.Random(f"{seed}:{task}:{attempt}")
    effect: true             perform a side effect at most once per AGENTCTL_IDEMPOTENCY_KEY
                             (after the gate, or before it with effect_first: true)
    gate: path               wait (touching $AGENTCTL_HEARTBEAT) until that file exists
    fail_unless: path        exit 3 unless that file exists
    fail_attempts: [1, ...]  exit 3 on these attempts (a retryable failure)
    chatter: seconds         print a line every 50 ms for that long (and never touch the beat)
    hang_attempts: [1, ...]  on these attempts: spawn a child, beat 3 times, then hang
    child_ignores_term: true the hanging child ignores SIGTERM (only SIGKILL stops it)
    pids_file: path          where the hanging agent appends "agent PID" and "child PID"
    leave_child: true        start a child that holds stdout and stderr open, and exit
                             without waiting for it (a daemon left behind)

Every execution first appends one JSON line to ``exec_log`` (O_APPEND, one write): run,
task, attempt, pid, time, key, tag and the first line of $AGENTCTL_PROMPT. The side effect is
the file ``effects_dir/<task>__<key>``, created with O_CREAT|O_EXCL, as an idempotent API
would: a second request with the same key changes nothing. The report is written to a
scratch file and renamed onto $AGENTCTL_OUTPUT, so it is never torn.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time


def append_line(path: str, obj: dict) -> None:
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


def spawn_child(b: dict) -> None:
    child_code = ("import signal, time\n"
                  + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                     if b.get("child_ignores_term") else "")
                  + "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", child_code])
    if b.get("pids_file"):
        append_line(b["pids_file"], {"agent": os.getpid(), "child": child.pid})


def hang(b: dict) -> None:
    spawn_child(b)
    for _ in range(3):
        beat()
        time.sleep(0.05)
    time.sleep(600)  # silent: no beat, no output


def effect(cfg: dict, task: str, key: str) -> None:
    try:
        fd = os.open(os.path.join(cfg["effects_dir"], f"{task}__{key}"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # already done under this key: the idempotent answer
    else:
        os.close(fd)


def main() -> int:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    tag = sys.argv[2] if len(sys.argv) > 2 else None
    task = os.environ["AGENTCTL_TASK_ID"]
    attempt = int(os.environ["AGENTCTL_ATTEMPT"])
    key = os.environ["AGENTCTL_IDEMPOTENCY_KEY"]
    b = {**cfg.get("default", {}), **cfg.get("tasks", {}).get(task, {})}

    prompt_head = None
    if os.environ.get("AGENTCTL_PROMPT"):
        with open(os.environ["AGENTCTL_PROMPT"]) as f:
            prompt_head = f.readline().strip()
    append_line(cfg["exec_log"], {"run": os.environ["AGENTCTL_RUN_ID"], "task": task,
                                  "attempt": attempt, "pid": os.getpid(),
                                  "time": time.time(), "key": key, "tag": tag,
                                  "prompt": prompt_head})

    if attempt in b.get("hang_attempts", []):
        hang(b)
    if b.get("leave_child"):
        spawn_child(b)
    if attempt in b.get("fail_attempts", []):
        print(f"{task}: failing attempt {attempt} on purpose", file=sys.stderr)
        return 3
    if b.get("fail_unless") and not os.path.exists(b["fail_unless"]):
        print(f"{task}: {b['fail_unless']} is missing", file=sys.stderr)
        return 3
    if b.get("chatter"):
        until = time.monotonic() + b["chatter"]
        while time.monotonic() < until:
            print("working", flush=True)
            time.sleep(0.05)
    if b.get("effect") and b.get("effect_first"):
        effect(cfg, task, key)
    if b.get("gate"):
        deadline = time.monotonic() + 120
        while not os.path.exists(b["gate"]) and time.monotonic() < deadline:
            beat()
            time.sleep(0.02)
    if b.get("effect") and not b.get("effect_first"):
        effect(cfg, task, key)
    if b.get("sleep"):
        lo, hi = b["sleep"]
        time.sleep(random.Random(f"{cfg.get('seed', 0)}:{task}:{attempt}").uniform(lo, hi))

    report = {"status": "COMPLETE", "summary": f"{task} attempt {attempt} done",
              "output": {"task": task, "attempt": attempt, "tag": tag}}
    scratch = os.path.join(cfg["scratch"], f"{task}.{attempt}.{os.getpid()}.json")
    with open(scratch, "w") as f:
        json.dump(report, f)
    os.replace(scratch, os.environ["AGENTCTL_OUTPUT"])
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main())
