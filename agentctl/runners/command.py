"""The ``command`` runner: a subprocess (a script, or a CLI agent such as ``claude -p``).

- argv only, no shell; expressions were substituted per argument before we get here;
- the process leads its own process group, so a timeout, a stale beat or a cancel stops the
  whole group: SIGTERM, a grace period, then SIGKILL;
- stdout and stderr go to files in the attempt's directory, bounded in size; every chunk read
  is a sign of life;
- the report is ``$AGENTCTL_OUTPUT`` if the agent wrote it, else exit code 0 = COMPLETE with
  the tail of stdout as the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
from pathlib import Path
from typing import IO, Any

from agentctl import redact
from agentctl.runners.base import Attempt, Outcome
from agentctl.store import write_atomic

LOG_CAP = 10 * 1024 * 1024
REPORT_CAP = 16 * 1024 * 1024
TAIL = 2000


class CommandRunner:
    grace_s = 3.0

    async def run(self, attempt: Attempt) -> Outcome:
        assert attempt.argv
        stdout_path = attempt.attempt_dir / "stdout.log"
        stderr_path = attempt.attempt_dir / "stderr.log"
        stdin_data = attempt.prompt.encode() if attempt.prompt is not None else None
        try:
            proc = await asyncio.create_subprocess_exec(
                *attempt.argv,
                stdin=asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=attempt.workdir,
                env=attempt.env,
                start_new_session=True,
            )
        except FileNotFoundError:
            if not attempt.workdir.is_dir():
                return Outcome(category="command_failed",
                               message=f"workdir {attempt.workdir} does not exist")
            return Outcome(category="command_failed",
                           message=f"command not found: {attempt.argv[0]}")
        except PermissionError:
            return Outcome(category="command_failed",
                           message=f"permission denied: {attempt.argv[0]}")
        except OSError as e:
            return Outcome(category="command_failed",
                           message=f"cannot start {attempt.argv[0]}: {e.strerror or e}")
        except ValueError as e:  # e.g. a NUL byte in an argument filled in from agent data
            return Outcome(category="command_failed",
                           message=f"cannot start {attempt.argv[0]}: {e}")
        # No pid file: a resume finds this agent's process group through /proc by the
        # AGENTCTL_INPUT path in its environment (engine._kill_run_processes).
        tails = {"stdout": bytearray(), "stderr": bytearray()}
        with _LazyLog(stdout_path) as out, _LazyLog(stderr_path) as err:
            readers = [
                asyncio.create_task(_pump(proc.stdout, out, tails["stdout"], attempt)),
                asyncio.create_task(_pump(proc.stderr, err, tails["stderr"], attempt)),
            ]
            if stdin_data is not None:
                readers.append(asyncio.create_task(_feed(proc.stdin, stdin_data)))
            try:
                rc = await _exited(proc)
            except asyncio.CancelledError:
                await _stop_group(proc, self.grace_s)
                for r in readers:
                    r.cancel()
                raise
            # A grandchild may hold the pipes open; don't wait on it for long.
            _done, pending = await asyncio.wait(readers, timeout=1.0)
            for r in pending:
                r.cancel()
        return _outcome(attempt, rc, bytes(tails["stdout"]), bytes(tails["stderr"]))


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class _LazyLog:
    """A log file made at the first byte there is to write: an agent that prints nothing
    leaves no empty file (and costs no create, ~0.1 ms on a busy disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._f is None:
            self._f = open(self.path, "wb", opener=_private)  # noqa: SIM115 (closed in __exit__)
        self._f.write(data)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def __enter__(self) -> _LazyLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()


async def _pump(stream: asyncio.StreamReader | None, sink: _LazyLog, tail: bytearray,
                attempt: Attempt) -> None:
    if stream is None:
        return
    written = 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        attempt.beat()
        if written < LOG_CAP:
            # Secrets are masked per chunk; one split across two reads can slip through.
            part = redact.default().text(chunk[: LOG_CAP - written].decode("utf-8", "replace")).encode()
            sink.write(part)
            written += len(part)
            if written >= LOG_CAP:
                sink.write(b"\n[agentctl: output truncated at 10 MiB]\n")
            sink.flush()
        tail += chunk
        if len(tail) > 4 * TAIL:
            del tail[: len(tail) - 2 * TAIL]


async def _feed(stdin: asyncio.StreamWriter | None, data: bytes) -> None:
    if stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.close()


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit code, once the process has exited. ``proc.wait()`` alone also waits (in
    Python 3.11) for the pipes to close, and a child the agent left behind can hold them
    open for ever: the attempt would hang until its timeout."""
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None:
            await asyncio.wait([waiter], timeout=0.2)  # returns at once in the usual case
    finally:
        waiter.cancel()
    return proc.returncode


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=grace)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_report_file(path: Path) -> tuple[bytes, str | None]:
    """The agent's report file, read defensively: it is agent-made, so it may be a link to
    /dev/zero, a FIFO nobody writes, or far too big. Never follow a link, never block, never
    read more than the cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        _discard(path)
        return b"", f"cannot be read ({e.strerror}); it must be a regular file, not a link"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _discard(path)
            return b"", "is not a regular file"
        if st.st_size > REPORT_CAP:
            return b"", f"is {st.st_size} bytes; the limit is 16 MiB"
        with contextlib.suppress(OSError):  # the agent wrote it with its own umask
            os.fchmod(fd, 0o600)
        chunks, total = [], 0
        while total <= REPORT_CAP:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > REPORT_CAP:
            return b"", "is larger than 16 MiB"
        return b"".join(chunks), None
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """A link or a FIFO in the state directory would hang or mislead whoever reads the run's
    files later (logs, backups): it is not data, so it goes."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _mask_in_place(path: Path, raw: bytes) -> None:
    """The report file lies in the state directory: no secret may stay in it."""
    text = raw.decode("utf-8", "replace")
    masked = redact.default().text(text)
    if masked != text:
        with contextlib.suppress(OSError):
            write_atomic(path, masked.encode(), durable=False)


def _tail_text(data: bytes) -> str:
    return data[-TAIL:].decode("utf-8", "replace").strip()


def _outcome(attempt: Attempt, rc: int, stdout: bytes, stderr: bytes) -> Outcome:
    details = {"exit_code": rc}
    out_path: Path = attempt.output_path
    if os.path.lexists(out_path):
        raw, problem = _read_report_file(out_path)
        if problem is not None:
            return Outcome(category="invalid_output", retryable=True, details=details,
                           message=f"$AGENTCTL_OUTPUT {problem}")
        try:
            report = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as e:
            return Outcome(category="invalid_output", retryable=True, details=details,
                           message=f"$AGENTCTL_OUTPUT is not valid JSON: {e}")
        except RecursionError:
            return Outcome(category="invalid_output", retryable=True, details=details,
                           message="$AGENTCTL_OUTPUT is nested too deeply")
        if not isinstance(report, dict):
            return Outcome(category="invalid_output", retryable=True, details=details,
                           message="$AGENTCTL_OUTPUT must hold a JSON object (the report)")
        _mask_in_place(out_path, raw)
        return Outcome(report=report, details=details)
    if rc == 0:
        summary = _tail_text(stdout) or f"{attempt.argv[0] if attempt.argv else 'command'} exited 0"
        return Outcome(report={"status": "COMPLETE", "summary": summary}, details=details)
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = f"killed by {name}"
    else:
        why = f"exit code {rc}"
    err = _tail_text(stderr)
    last = err.splitlines()[-1] if err else ""
    msg = f"{why}: {last}" if last else why
    return Outcome(category="command_failed", message=msg, retryable=True, details=details)
