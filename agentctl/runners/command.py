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
import subprocess
import threading
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
        stdin_data = attempt.prompt.encode() if attempt.prompt is not None else None
        try:
            env = _encoded(attempt.env)  # a value no file system can hold: ValueError below
            # A process watched by the event loop's readers, not asyncio's subprocess
            # transports: those cost ~35 callbacks and 4 tasks per process (a third of a
            # `true` task's time), these 3-4 callbacks. Started by posix_spawn where it
            # can be, else by subprocess.Popen (which also words any error).
            proc: _Child = _spawn(attempt.argv, attempt.workdir, env, stdin_data is not None) \
                or subprocess.Popen(
                    attempt.argv,
                    stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    cwd=attempt.workdir, env=env, start_new_session=True,
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
        watch = _Process(proc, attempt, stdin_data)
        try:
            try:
                # Shielded: a cancel (timeout, stale, Ctrl-C) must not cancel the exit
                # future itself, which _stop_group waits on through the grace period.
                rc = await asyncio.shield(watch.exited)
            except asyncio.CancelledError:
                await _stop_group(proc, watch, self.grace_s)
                raise
            # A grandchild may hold the pipes open; don't wait on it for long.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watch.drained), timeout=1.0)
        finally:
            watch.close()
        return _outcome(attempt, rc, bytes(watch.tails[0]), bytes(watch.tails[1]))


class _Pipe:
    """Our end of a pipe to a spawned agent, as much of a file object as _Process uses."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class _Spawned:
    """A process started by ``_spawn``, as much of a ``subprocess.Popen`` as _Process uses."""

    def __init__(self, pid: int, stdin: int | None, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = _Pipe(stdin) if stdin is not None else None
        self.stdout: _Pipe | None = _Pipe(stdout)
        self.stderr: _Pipe | None = _Pipe(stderr)

    def _reaped(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: its status is lost (as Popen does)
                self.returncode = 0
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        rc = self._reaped(0)
        assert rc is not None
        return rc

    def poll(self) -> int | None:
        return self._reaped(os.WNOHANG)


_Child = _Spawned | subprocess.Popen[bytes]
# What Popen's restore_signals gives a child: Python ignores these, an agent must not.
_SIGDEF = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))
_swept: bool | None = None  # None: to do (first use, or threads ran since); False: no /proc
_unreaped: list[_Spawned] = []  # agents that outlived SIGKILL and its grace (stuck in the kernel)


def _spawn(argv: list[str], workdir: Path, env: dict[bytes, bytes], stdin: bool) -> _Spawned | None:
    """Start an agent with ``os.posix_spawn`` (glibc's vfork and exec): ~75 us less per
    agent than ``subprocess.Popen``'s Python around the same vfork. None where it cannot
    stand in for Popen; Popen starts that one, and words any error. Popen's other duties:
    the new session (``setsid``), signal dispositions (``setsigdef``), PATH searched in
    the agent's own environment (``_which``), and no descriptor of ours left open in the
    agent (Popen closes them all in the child; posix_spawn only honours close-on-exec).
    Ours are close-on-exec (Python's default); ``_sweep`` makes any others so. A C library
    in another thread may open one without it at any moment (OpenSSL reading its CA bundle
    while litellm imports, for one): while another thread lives, Popen starts agents."""
    global _swept
    if not hasattr(os, "posix_spawn") or _swept is False:
        return None
    if threading.active_count() > 1:
        _swept = None  # what those threads left open is swept before the next posix_spawn
        return None
    try:
        if os.fspath(workdir) != os.getcwd():  # posix_spawn cannot change directory (3.11)
            return None
    except OSError:  # our directory is gone (a task made the workspace again): Popen's chdir
        return None
    exe = _which(argv[0], env.get(b"PATH"))
    if exe is None or not _sweep():
        return None
    for old in _unreaped[:]:
        if old.poll() is not None:
            _unreaped.remove(old)
    ours: list[int] = []
    theirs: list[int] = []
    try:
        # Pipes are close-on-exec: only the copies dup2'd onto 0, 1 and 2 reach the agent.
        # ours: [stdin's write end,] stdout's and stderr's read ends; theirs: the others.
        if stdin:
            r, w = os.pipe()
            ours.append(w)
            theirs.append(r)
        for _ in range(2):
            r, w = os.pipe()
            ours.append(r)
            theirs.append(w)
        if min(ours + theirs) < 3:  # we have no stdin/stdout/stderr: leave that to Popen
            raise OSError("low descriptor")
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, theirs[-2], 1),
                                          (os.POSIX_SPAWN_DUP2, theirs[-1], 2)]
        actions.insert(0, (os.POSIX_SPAWN_DUP2, theirs[0], 0) if stdin
                       else (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        pid = os.posix_spawn(exe, argv, env, file_actions=actions, setsid=True,
                             setsigdef=_SIGDEF)
    except (OSError, ValueError, NotImplementedError):  # the last: no setsid in this libc
        for fd in ours:
            os.close(fd)
        return None
    finally:
        for fd in theirs:
            os.close(fd)
    if stdin:
        return _Spawned(pid, ours[0], ours[1], ours[2])
    return _Spawned(pid, None, ours[0], ours[1])


def _sweep() -> bool:
    """Every descriptor of this process from 3 up made close-on-exec: those it inherited,
    and any a thread opened without (done again after threads ran). False: no /proc."""
    global _swept
    if _swept is None:
        try:
            fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            _swept = False
            return False
        for fd in fds:
            if fd > 2:
                with contextlib.suppress(OSError):
                    if os.get_inheritable(fd):
                        os.set_inheritable(fd, False)
        _swept = True
    return _swept


_path_dirs: dict[bytes | None, list[str]] = {}


def _which(name: str, path: bytes | None) -> str | None:
    """The program ``name`` names, searched as exec does (and Popen with ``env``): a name
    with a slash as it is, else the first regular, executable file of that name along the
    agent's PATH, searched afresh for every agent (a task may install a program another
    runs). None: not found."""
    if "/" in name:
        return name
    dirs = _path_dirs.get(path)
    if dirs is None:
        if len(_path_dirs) > 64:
            _path_dirs.clear()
        text = os.fsdecode(path) if path is not None else os.defpath
        dirs = _path_dirs[path] = [f"{d or '.'}/" for d in text.split(os.pathsep)]
    for d in dirs:
        candidate = d + name
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
    return None


_ENCODED: dict[str, bytes] = {}


def _encoded(env: dict[str, str]) -> dict[bytes, bytes]:
    """The environment as bytes, each string encoded once per process: every agent gets the
    driver's ~50 variables again, and Popen's own encoding of them took 40 us a spawn."""
    cache = _ENCODED
    if len(cache) > 4096:
        cache.clear()
    out: dict[bytes, bytes] = {}
    for k, v in env.items():
        kb = cache.get(k)
        if kb is None:
            kb = cache[k] = os.fsencode(k)
        vb = cache.get(v)
        if vb is None:
            vb = cache[v] = os.fsencode(v)
        out[kb] = vb
    return out


class _Process:
    """A started agent, watched from the event loop: its stdout and stderr read as they come
    (into bounded, masked log files; every chunk is a sign of life), its prompt fed to
    stdin, its exit seen through a pid file descriptor (Linux 5.3+; else polled)."""

    def __init__(self, proc: _Child, attempt: Attempt, stdin_data: bytes | None) -> None:
        self.proc = proc
        self.attempt = attempt
        self.loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self.loop.create_future()
        self.drained: asyncio.Future[None] = self.loop.create_future()
        self.tails = (bytearray(), bytearray())
        self.logs = (_LazyLog(attempt.file("stdout.log")),
                     _LazyLog(attempt.file("stderr.log")))
        self.written = [0, 0]
        self.open: dict[int, int] = {}  # fd -> 0 (stdout) or 1 (stderr)
        for i, pipe in enumerate((proc.stdout, proc.stderr)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.open[fd] = i
            self.loop.add_reader(fd, self._read, fd)
        self.stdin_left = b""
        if stdin_data is not None and proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            self.stdin_left = stdin_data
            self.loop.add_writer(proc.stdin.fileno(), self._feed)
        self.pidfd = -1
        self.poller: asyncio.TimerHandle | None = None
        try:
            self.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux, an old kernel, or a sandbox
            self._poll()
        else:
            self.loop.add_reader(self.pidfd, self._reap)

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        i = self.open.get(fd)
        if i is None:
            return
        if not chunk:
            self._close_pipe(fd)
            return
        self.attempt.beat()
        if self.written[i] < LOG_CAP:
            # Secrets are masked per chunk; one split across two reads can slip through.
            part = redact.default().text(chunk[: LOG_CAP - self.written[i]].decode("utf-8", "replace")).encode()
            log = self.logs[i]
            log.write(part)
            self.written[i] += len(part)
            if self.written[i] >= LOG_CAP:
                log.write(b"\n[agentctl: output truncated at 10 MiB]\n")
            log.flush()
        tail = self.tails[i]
        tail += chunk
        if len(tail) > 4 * TAIL:
            del tail[: len(tail) - 2 * TAIL]

    def _close_pipe(self, fd: int) -> None:
        if self.open.pop(fd, None) is None:
            return
        self.loop.remove_reader(fd)
        if not self.open and not self.drained.done():
            self.drained.set_result(None)

    def _feed(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            n = os.write(stdin.fileno(), self.stdin_left[:65536])
        except BlockingIOError:
            return
        except OSError:  # the agent closed its stdin (BrokenPipe): it read what it wanted
            n = len(self.stdin_left)
        self.stdin_left = self.stdin_left[n:]
        if not self.stdin_left:
            self._close_stdin()

    def _close_stdin(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            self.loop.remove_writer(stdin.fileno())
            with contextlib.suppress(OSError):
                stdin.close()

    def _reap(self) -> None:
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        rc = self.proc.wait()
        if not self.exited.done():
            self.exited.set_result(rc)

    def _poll(self) -> None:
        self.poller = None
        rc = self.proc.poll()
        if rc is not None:
            if not self.exited.done():
                self.exited.set_result(rc)
            return
        self.poller = self.loop.call_later(0.02, self._poll)

    def close(self) -> None:
        """Stop watching; close every descriptor (the process has exited or been killed)."""
        for fd in list(self.open):
            self._close_pipe(fd)
        self._close_stdin()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        for log in self.logs:
            log.close()
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        if self.poller is not None:
            self.poller.cancel()
            self.poller = None
        if self.proc.returncode is None:
            with contextlib.suppress(OSError):
                self.proc.poll()
            if self.proc.returncode is None and isinstance(self.proc, _Spawned):
                _unreaped.append(self.proc)  # reaped at a later spawn, as Popen's would be


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
            self._f = open(self.path, "wb", opener=_private)  # noqa: SIM115 (closed in close())
        self._f.write(data)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


async def _stop_group(proc: _Child, watch: _Process, grace: float) -> None:
    """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(watch.exited), timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(watch.exited), timeout=grace)


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
