"""The model host: litellm's calls in a process of their own, beside the driver.

A model call through litellm costs ~1.7 ms of Python on the calling thread before any reply
(its request building, token counting, cost and logging), and litellm's import costs seconds.
In the driver that CPU shares one GIL with the engine's own work (the WAL, the files, the
schedule): 1,000 instant calls at concurrency 16 took 1.3-1.7x a plain loop of the same calls.
In a host process they run on another core while the driver does its part, and the driver
never imports litellm at all (its import no longer slows a run's start; its memory and its
threads stay out of the driver's).

The driver starts one host per process (at preflight when a run has llm tasks, or at the first
call), and the host imports litellm at once. They speak JSON lines over the host's stdin and
stdout; the host's stdout is the answers' alone (anything printed goes to its stderr, which is
the driver's). Driver -> host::

    {"op": "call", "id": 7, "kwargs": {...}}      litellm.acompletion(**kwargs)
    {"op": "cancel", "id": 7}                     the call is not wanted any more: stop it
    {"op": "info", "id": 8, "model": "...", "api_base": null}
    {"op": "status", "id": 9}                     how many calls run (a cancelled one until it
                                                  has stopped); the host's pid and CPU

and host -> driver ``{"ready": true}`` once litellm is imported, then ``{"id": 7, ...}``: a
call's reply or ``failure``, as ``agentctl.runners.litellm_client`` makes them. What is durable stays the driver's: a reply is
logged in the WAL by the llm runner before it is used, exactly as when litellm ran in the
driver.

How it ends:

- The driver closes the host's stdin when its process exits; the host exits at once, calls
  still out and all. A driver that is killed closes it too (the kernel does), and so does a host
  found with another environment than the driver's now (a test that set a key), which is
  replaced.
- The host runs in a session of its own (and ignores SIGINT): a signal to the driver's
  process group (Ctrl-C, ``timeout``, a service manager's SIGTERM) is the driver's to handle;
  the host must not die of it under the calls the driver is ending cleanly.
- A host that dies fails the calls it had as retryable connection errors, and the next call
  starts another.

``AGENTCTL_MODEL_HOST=0`` runs litellm in the driver instead, and so does a driver that may use
one CPU only (``agentctl.runners.llm.use_host``): there the two processes would take turns on
it, and the pipe would be pure cost. ``AGENTCTL_MODEL_HOST=1`` asks for the host regardless.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentctl import redact
from agentctl.errors import RunnerError
from agentctl.runners import litellm_client

ANSWER_WAIT_S = 300.0  # preflight's wait for a host importing litellm on a loaded machine
# The host runs this agentctl (the driver's), found after the standard library and before the
# other site directories: first in sys.path, a wheel's site-packages would let any module
# there with a standard library name (old backports install `uuid`, `pathlib`) shadow it.
_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_HOST_CODE = (
    "import sys; at = next((i for i, p in enumerate(sys.path) "
    "if p.endswith(('site-packages', 'dist-packages'))), len(sys.path)); "
    f"sys.path.insert(at, {_ROOT!r}); "
    "from agentctl.runners.modelhost import main; main()")


class HostError(RunnerError):
    """The model host could not be started, or ended before it answered: an attempt that
    meets it fails as a retryable provider error; before a run, the CLI says it in a line."""

    def __init__(self, message: str) -> None:
        super().__init__("provider_error", message, retryable=True)


class _Lines:
    """JSON lines over a pair of non-blocking pipe ends: ``send`` buffers what the pipe does
    not take at once, and an event loop (``attach``) or ``read_sync`` delivers each line
    read to ``on_line`` and the end of input to ``on_eof``."""

    def __init__(self, rfd: int, wfd: int, on_line: Callable[[dict[str, Any]], None],
                 on_eof: Callable[[], None]) -> None:
        self.rfd, self.wfd = rfd, wfd
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self.on_line, self.on_eof = on_line, on_eof
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rparts: list[bytes] = []  # the start of a line not yet ended
        self.wbuf = bytearray()
        self.broken = False  # the other end is gone: what is sent is dropped

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.detach()
        self.loop = loop
        loop.add_reader(self.rfd, self._readable)
        if self.wbuf:
            loop.add_writer(self.wfd, self._writable)

    def detach(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.rfd)
            loop.remove_writer(self.wfd)

    def send(self, msg: dict[str, Any]) -> None:
        if self.broken:
            return
        data = json.dumps(msg).encode() + b"\n"
        if self.wbuf:
            self.wbuf += data
            return
        try:
            n = os.write(self.wfd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # EPIPE: the reader is gone, and the end of our input will say so
            self.broken = True
            return
        if n < len(data):
            self.wbuf += data[n:]
            if self.loop is not None:
                self.loop.add_writer(self.wfd, self._writable)

    def _writable(self) -> None:
        try:
            n = os.write(self.wfd, self.wbuf)
        except BlockingIOError:
            return
        except OSError:
            n, self.broken = len(self.wbuf), True
        del self.wbuf[:n]
        if not self.wbuf and self.loop is not None:
            self.loop.remove_writer(self.wfd)

    def _readable(self) -> None:
        try:
            data = os.read(self.rfd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.detach()
            self.on_eof()
            return
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line = data[start:end]
            if self.rparts:  # joined once, when it ends: a line of many reads stays linear
                line = b"".join((*self.rparts, line))
                self.rparts.clear()
            start = end + 1
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not ours: the other end writes nothing else here
            if isinstance(msg, dict):
                self.on_line(msg)
        if start < len(data):
            self.rparts.append(data[start:])

    def read_sync(self, done: Callable[[], bool], timeout: float) -> bool:
        """Without an event loop (before a run starts): write what is buffered, then read
        until ``done()``; False if ``timeout`` passed first. The end of input calls
        ``on_eof`` (which should make ``done()`` true)."""
        end = time.monotonic() + timeout
        while not done():
            left = end - time.monotonic()
            if left <= 0:
                return False
            writing = [self.wfd] if self.wbuf and not self.broken else []
            readable, writable, _ = select.select([self.rfd], writing, [], left)
            if writable:
                self._writable()
            if readable:
                self._readable()
        return True

    def close(self) -> None:
        self.detach()
        for fd in (self.rfd, self.wfd):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- the driver's side


class HostClient:
    """The driver's end of the model host: the same ``call``/``info`` as ``LitellmClient``,
    answered by the host process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pipe: _Lines | None = None
        self.env: dict[str, str] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]] | None] = {}
        self.replies: dict[int, dict[str, Any]] = {}  # answers to requests made without a loop
        self.infos: dict[tuple[str, str | None], dict[str, Any]] = {}
        self.seq = 0
        self.host_ready = False  # the host said litellm is imported
        self.waiters: list[asyncio.Future[None]] = []  # for that
        self._atexit = False

    # ------------------------------------------------------------------ the process

    def start(self) -> None:
        """A host for this process's environment, now: nothing to do if one is alive with
        the same environment; else (none yet, it died, or the environment changed) a new
        one, which begins importing litellm at once."""
        litellm_client.set_env()
        env = dict(os.environ)
        if self.proc is not None and self.proc.poll() is None and env == self.env:
            return
        self.stop()
        try:
            # -P: nothing from the working directory shadows a module the host imports. A
            # session of its own: a signal to the driver's process group (a terminal's Ctrl-C,
            # `timeout`, `kill -TERM -PGID`, a service manager's stop) is the driver's to
            # handle, and must not kill the host under the calls the driver is ending.
            proc = subprocess.Popen([sys.executable, "-P", "-c", _HOST_CODE],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                    start_new_session=True)
        except OSError as e:
            raise HostError(f"cannot start the model host process ({sys.executable}): "
                            f"{e.strerror or e}") from None
        assert proc.stdin is not None and proc.stdout is not None
        self.proc, self.env, self.infos = proc, env, {}
        self.host_ready = False
        self.pipe = _Lines(proc.stdout.fileno(), proc.stdin.fileno(), self._answer, self._ended)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def stop(self, wait_s: float = 5.0) -> None:
        """Close the host's input, so it ends what it has and exits; kill it after ``wait_s``."""
        # A host still importing litellm would read its end of stdin only after: killed now.
        self._drop(wait_s, kill=not self.host_ready)
        self._fail_pending("the model host process was stopped")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _ended(self) -> None:
        """The host's output ended: it exited (or is about to). Its calls fail, retryable."""
        rc = self._drop(2.0)
        how = (f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}")
        self._fail_pending(f"the model host process ended ({how})")

    def _drop(self, wait_s: float, *, kill: bool = False) -> int | None:
        """Let go of the host: off the event loop, its pipes closed (EOF on its stdin), then
        reaped, killed if it is not gone after ``wait_s``. Its exit status, or None if there
        was none."""
        proc, pipe = self.proc, self.pipe
        self.proc = self.pipe = None
        if pipe is not None:
            pipe.detach()
        if proc is None:
            return None
        if kill:
            with contextlib.suppress(OSError):
                proc.kill()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        try:
            return proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _wake(self) -> None:
        for fut in self.waiters:
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(None)
        self.waiters.clear()

    def _fail_pending(self, why: str) -> None:
        self.host_ready = False
        self._wake()  # a host that died is not waited for: the call that follows says why
        failed = {"failure": litellm_client.failure("connection", True, why)}
        for rid, fut in list(self.pending.items()):
            if fut is None:
                self.replies[rid] = failed
            elif not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(failed)
        self.pending.clear()

    def _answer(self, msg: dict[str, Any]) -> None:
        if msg.get("ready"):
            self.host_ready = True
            self._wake()
            return
        rid = msg.get("id")
        if not isinstance(rid, int) or rid not in self.pending:
            return  # a call given up on (cancelled) still answered: nobody waits for it
        fut = self.pending.pop(rid)
        if fut is None:
            self.replies[rid] = msg
        elif not fut.done() and not fut.get_loop().is_closed():
            fut.set_result(msg)

    def _attached(self) -> tuple[asyncio.AbstractEventLoop, _Lines]:
        loop = asyncio.get_running_loop()
        if self.pipe is None or self.pipe.loop is not loop:
            if self.pipe is not None:
                self.pipe.detach()
            self.start()  # a new loop (a new run in this process) checks the environment
            assert self.pipe is not None
            self.pipe.attach(loop)
        return loop, self.pipe

    # ------------------------------------------------------------------ requests

    def is_ready(self) -> bool:
        return self.host_ready and self.proc is not None

    async def ready(self) -> None:
        """Until the host has imported litellm (seconds, for a host just started), or died."""
        loop, _ = self._attached()
        if not self.host_ready:
            fut: asyncio.Future[None] = loop.create_future()
            self.waiters.append(fut)
            await fut

    def _post(self, pipe: _Lines, msg: dict[str, Any],
              fut: asyncio.Future[dict[str, Any]] | None) -> int:
        """Send a request under a new id; its answer goes to ``fut`` (None: to ``replies``,
        for a request made without an event loop)."""
        self.seq += 1
        self.pending[self.seq] = fut
        pipe.send({**msg, "id": self.seq})
        return self.seq

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        loop, pipe = self._attached()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        rid = self._post(pipe, msg, fut)
        try:
            return await fut
        finally:
            # Given up on (a timeout, a cancel): the host stops the call too.
            if self.pending.pop(rid, None) is not None and self.pipe is pipe:
                pipe.send({"op": "cancel", "id": rid})

    async def call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return await self.request({"op": "call", "kwargs": kwargs})

    async def info(self, model: str, api_base: str | None) -> dict[str, Any]:
        """What the host says of ``model``; ``failure`` if the host ended first."""
        key = (model, api_base)
        got = self.infos.get(key)
        if got is None:
            got = await self.request({"op": "info", "model": model, "api_base": api_base})
            if "failure" not in got:
                self.infos[key] = got
        return got

    def info_sync(self, model: str, api_base: str | None) -> dict[str, Any]:
        """``info`` before a run starts (preflight: no event loop yet)."""
        key = (model, api_base)
        if key not in self.infos:
            if self.pipe is not None:
                self.pipe.detach()  # from a finished run's loop, if one is still attached
            self.start()
            pipe = self.pipe
            assert pipe is not None
            rid = self._post(pipe, {"op": "info", "model": model, "api_base": api_base}, None)
            if not pipe.read_sync(lambda: rid in self.replies, ANSWER_WAIT_S):
                self.pending.pop(rid, None)
                raise HostError(f"the model host process did not answer within "
                                f"{ANSWER_WAIT_S:g} s")
            got = self.replies.pop(rid)
            if "failure" in got:
                raise HostError(got["failure"]["message"] + " before it answered")
            self.infos[key] = got
        return self.infos[key]

    async def status(self) -> dict[str, Any]:
        """The host's view: how many calls it has out, its pid and CPU seconds."""
        return await self.request({"op": "status"})

    async def aclose(self) -> None:
        """At the end of a run: let go of this event loop. The host lives on for the next
        run in this process (tests run many) and is stopped when the process exits."""
        if self.pipe is not None:
            self.pipe.detach()


# --------------------------------------------------------------------------- the host's side


def main() -> None:
    """The host process: answer the driver's requests until its end of our stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    out = os.dup(1)
    os.dup2(2, 1)  # whatever litellm prints goes to stderr, never into our answers
    sys.stdout = sys.stderr
    try:
        litellm_client.load()  # at once: the driver started us early so that this overlaps
    except Exception as e:  # a broken install: one line, and the driver says what ended
        print(f"agentctl: model host: cannot import litellm: {type(e).__name__}: "
              f"{redact.default().text(str(e))}", file=sys.stderr)
        raise SystemExit(1) from None
    asyncio.run(_serve(0, out))


async def _serve(rfd: int, wfd: int) -> None:
    loop = asyncio.get_running_loop()
    client = litellm_client.LitellmClient()
    litellm = litellm_client.load()
    calls: dict[int, asyncio.Task[None]] = {}
    ended = loop.create_future()

    async def answer(rid: int, kwargs: dict[str, Any]) -> None:
        try:
            reply = await client.call(kwargs)
        except Exception as e:  # ours, not the model's: still an answer, never a hang
            reply = {"failure": litellm_client.failure(
                "unexpected", False, redact.default().text(f"{type(e).__name__}: {e}"))}
        pipe.send({"id": rid, **reply})

    def _forget(rid: int) -> None:
        calls.pop(rid, None)

    def on_line(msg: dict[str, Any]) -> None:
        op, rid = msg.get("op"), msg.get("id")
        if not isinstance(rid, int):
            return
        if op == "call":
            task = loop.create_task(answer(rid, dict(msg.get("kwargs") or {})))
            calls[rid] = task
            task.add_done_callback(lambda _t: _forget(rid))
        elif op == "cancel":  # the task leaves `calls` when it is done (cancelled)
            gone = calls.get(rid)
            if gone is not None:
                gone.cancel()
        elif op == "info":
            pipe.send({"id": rid, **client.info_now(litellm, str(msg.get("model") or ""),
                                                    msg.get("api_base"))})
        elif op == "status":
            pipe.send({"id": rid, "calls": len(calls), "pid": os.getpid(),
                       "cpu_s": time.process_time()})

    def on_eof() -> None:
        if not ended.done():
            ended.set_result(None)

    pipe = _Lines(rfd, wfd, on_line, on_eof)
    pipe.attach(loop)
    pipe.send({"ready": True, "pid": os.getpid()})  # litellm is imported: calls are quick now
    await ended
    # The driver is gone or done: nothing here is worth keeping. Exit now, rather than let
    # litellm close its clients and the interpreter tear down ~300,000 objects (~0.15 s the
    # driver waited for at its exit); the kernel closes the sockets of calls still out.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
