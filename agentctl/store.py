"""The files of a run: write-ahead log, snapshot, heartbeats, the lock.

Promises, in the order things happen:

1. The WAL (``wal.jsonl``) is the truth. Each line is one JSON record carrying ``seq``
   (1, 2, 3, ... with no gap) and ``crc`` (CRC-32 of the line's JSON without the crc field).
   ``append`` writes a batch of records with one ``os.write`` on an O_APPEND descriptor and
   then one ``fsync``: records may share an fsync (group commit), and the caller acts on none
   of them until ``append`` has returned.
2. Reading: a bad or partial record with nothing valid after it is a torn tail, left by a
   crash mid-write: readers ignore it and ``repair`` cuts it off. A bad record followed by a
   good one is corruption in the middle: CorruptLogError, never a guess.
3. ``run.json`` is derived from the WAL and replaced atomically (temp file in the same
   directory, fsync, ``os.replace``, fsync of the directory). It carries the WAL ``seq`` and
   byte offset it reflects, so readers replay only the records after it.
4. Other files (``output.json``, ``input.json``) are replaced atomically (temp + rename) but
   are derived: after a power loss the WAL regenerates them.
5. One driver per run: ``lock`` is held with ``filelock`` by the driving process; the OS
   drops it when that process dies, so a dead holder's lock is simply taken over.
6. Directories are 0700 and files 0600; temp files a crash left behind are removed when a
   driver starts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import socket
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentctl import redact
from agentctl.errors import CorruptLogError, LockHeld, RunNotFound, StateError

WAL = "wal.jsonl"
SNAPSHOT = "run.json"
TMP_SUFFIX = ".tmp"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _crc(body: str) -> str:
    return f"{zlib.crc32(body.encode('utf-8')) & 0xFFFFFFFF:08x}"


def encode_record(rec: dict[str, Any]) -> bytes:
    return _line(_dumps(rec))


def _line(body: str) -> bytes:
    """A WAL line: the record's compact JSON with its checksum as the last member."""
    return (body[:-1] + f',"crc":"{_crc(body)}"}}\n').encode()


def _encode_clean(rec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The record's compact JSON with secrets masked (their JSON-escaped forms included),
    and the record as written (the same object when there was nothing to mask)."""
    body = _dumps(rec)
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON allows "\ud800"; an agent's report may hold one) is no
        # text: written as "?" rather than crash the driver, and the record applied is the
        # record written.
        body = body.encode("utf-8", "replace").decode("utf-8")
        rec = json.loads(body)
    return redact.default().encoded(body, rec, _dumps)


def decode_record(line: bytes) -> dict[str, Any] | None:
    """The record on a line, or None when the line is not a whole, intact record."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    crc = obj.pop("crc", None)
    if not isinstance(crc, str) or _crc(_dumps(obj)) != crc or not isinstance(obj.get("seq"), int):
        return None
    return obj


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_tmp_names = itertools.count()


def write_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    """Replace ``path`` with ``data``: readers see the old or the new file, never a mix."""
    dirname, sep, name = os.fspath(path).rpartition("/")  # "", "", name: a bare name
    while True:
        # Unique among live processes (the pid) and within this one (the count); a name
        # left by a dead process that had our pid is skipped.
        tmp = f"{dirname}{sep}.{name}.{os.getpid()}-{next(_tmp_names)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any, *, durable: bool = False, compact: bool = False) -> None:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")) if compact else \
        json.dumps(obj, ensure_ascii=False, indent=2)
    write_atomic(path, (text + "\n").encode(), durable=durable)


def write_output(task_dir: Path, report: dict[str, Any]) -> None:
    """A task's committed report as ``tasks/<id>/output.json``: derived from the WAL,
    compact, replaced atomically, not fsync'd (resume writes again what a crash lost)."""
    path = task_dir / "output.json"
    try:
        write_json_atomic(path, report, compact=True)
    except FileNotFoundError:  # no directory yet (a group, a person's report)
        makedirs(task_dir)
        write_json_atomic(path, report, compact=True)


def attempt_name(attempt: int, name: str) -> str:
    """An attempt's file's name in its task's directory: ``attempt-2.stderr.log``. One
    directory per task, not one more per attempt: on ext4 a mkdir costs more than two small
    files, and a task's first attempt made three (``tasks/<id>/attempts/<n>``)."""
    return f"attempt-{attempt}.{name}"


def makedirs(path: Path) -> None:
    """``path`` and its missing parents, each 0700 (``mkdir(parents=True)`` would give the
    parents it creates the umask's mode, 0755 as a rule). Tries the directory itself first:
    a failed mkdir costs less than the stats of walking up to see what exists."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    except FileNotFoundError:
        if path.parent == path:
            raise
    makedirs(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


class WalScan:
    """The result of reading a WAL: its records and where the good part ends."""

    def __init__(self, records: list[dict[str, Any]], good_bytes: int, torn_bytes: int) -> None:
        self.records = records
        self.good_bytes = good_bytes
        self.torn_bytes = torn_bytes


def scan_wal(path: Path, *, start: int = 0, start_seq: int = 0) -> WalScan:
    """Read records from byte ``start`` on. Raises CorruptLogError for damage in the middle."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        raise StateError(f"{path}: the run has no write-ahead log") from None
    records: list[dict[str, Any]] = []
    pos = 0
    good_end = 0
    bad: tuple[int, int] | None = None  # (line number, offset) of the first bad line
    expect = start_seq + 1
    lineno = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        lineno += 1
        rec = decode_record(line) if nl >= 0 else None
        if rec is None:
            if bad is None:
                bad = (lineno, start + pos)
        else:
            if bad is not None:
                raise CorruptLogError(
                    f"{path}: record at byte {bad[1]} is damaged (bad checksum or not JSON) "
                    f"and valid records follow it; the log is corrupt in the middle, so "
                    f"agentctl will not guess. Restore {path.name} from a backup, or move the "
                    "run aside."
                )
            if rec["seq"] != expect:
                raise CorruptLogError(
                    f"{path}: record at byte {start + pos} has sequence {rec['seq']}, expected "
                    f"{expect}; records are missing or repeated"
                )
            expect += 1
            records.append(rec)
            good_end = end
        pos = end
    return WalScan(records, start + good_end, len(data) - good_end)


def cut_torn_tail(path: Path) -> WalScan:
    """Read the WAL and cut off a torn last record, durably. For the lock holder only."""
    scan = scan_wal(path)
    if scan.torn_bytes:
        with open(path, "r+b") as f:
            f.truncate(scan.good_bytes)
            os.fsync(f.fileno())
    return scan


class RunDir:
    """The directory of one run and the files in it. Reading needs no lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = path.name
        # Joined once: the scheduler asks for a few paths per attempt.
        self._tasks = path / "tasks"
        self._beats = path / "heartbeats"

    # paths
    @property
    def wal(self) -> Path:
        return self.path / WAL

    @property
    def snapshot(self) -> Path:
        return self.path / SNAPSHOT

    @property
    def definition(self) -> Path:
        return self.path / "definition"

    @property
    def heartbeats(self) -> Path:
        return self._beats

    @property
    def driver_file(self) -> Path:
        return self.heartbeats / "driver.json"

    @property
    def control(self) -> Path:
        return self.path / "control"

    def task_dir(self, task_id: str) -> Path:
        return self._tasks / task_id

    def attempt_file(self, task_id: str, attempt: int, name: str) -> Path:
        """``tasks/<id>/attempt-<n>.<name>``: an attempt's files sit beside the task's
        input.json and output.json, so a task costs one directory (see ``attempt_name``)."""
        return self._tasks.joinpath(task_id, attempt_name(attempt, name))

    def make_task_dir(self, task_id: str) -> None:
        """``tasks/<id>`` (0700), if it is not there yet."""
        path = self._tasks / task_id
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:  # no tasks/ (made with the run): make what is missing
            makedirs(path)

    def attempt_files(self, task_id: str, attempt: int) -> dict[str, Path]:
        """The files attempt ``attempt`` of a task left, by name (``exchange.json``, ...):
        ``tasks/<id>/attempt-<n>.<name>``, and in a run an earlier agentctl made,
        ``tasks/<id>/attempts/<n>/<name>``. Sorted by name; hidden (temp) files left out."""
        tdir = self._tasks / task_id
        prefix = attempt_name(attempt, "")
        found: dict[str, Path] = {}
        for folder, strip in ((tdir / "attempts" / str(attempt), ""), (tdir, prefix)):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                if e.name.startswith(strip) and not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                    name = e.name[len(strip):]
                    if name:
                        found[name] = Path(e.path)
        return dict(sorted(found.items()))

    def heartbeat_file(self, task_id: str) -> Path:
        return self._beats / f"{task_id}.beat"

    def exists(self) -> bool:
        return self.wal.exists()

    # reading
    def read_driver(self) -> tuple[dict[str, Any] | None, float | None]:
        """The driver's identity and its heartbeat age in seconds (wall clock)."""
        try:
            st = self.driver_file.stat()
            info = json.loads(self.driver_file.read_bytes())
        except (FileNotFoundError, ValueError):
            return None, None
        return (info if isinstance(info, dict) else None), max(0.0, time.time() - st.st_mtime)

    def heartbeat_age(self, task_id: str, since: str | None = None) -> float | None:
        """Seconds since the task last beat: its heartbeat file's age, or, when that file is
        missing (an in-process runner's is made at its first beat) or older (an earlier
        attempt's), the time since ``since``, the running attempt's start (an ISO stamp)."""
        now = time.time()
        try:
            age: float | None = max(0.0, now - self.heartbeat_file(task_id).stat().st_mtime)
        except FileNotFoundError:
            age = None
        if since:
            try:
                started = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return age
            from_start = max(0.0, now - started)
            return from_start if age is None else min(age, from_start)
        return age


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def driver_alive(info: dict[str, Any] | None, age: float | None, interval: float) -> bool:
    if not info or age is None:
        return False
    if info.get("host") != socket.gethostname():
        return age < 10 * interval  # another machine: trust the beat alone
    return pid_alive(int(info.get("pid", 0))) and age < max(10.0, 10 * interval)


class Journal:
    """The writing side of a run: owned by the one driver that holds the lock."""

    def __init__(self, run: RunDir, *, next_seq: int) -> None:
        self.run = run
        self.seq = next_seq - 1
        self.fsyncs = 0
        self._pending: list[bytes] = []
        self._broken: BaseException | None = None
        self._fd = os.open(run.wal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def stage(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Number, stamp, mask and encode a record for the next ``flush``; returns the record
        as it will be written (``rec`` itself is left as it was). Nothing may act on it
        outside this process before ``flush`` returns."""
        if self._broken is not None:
            raise self._broken
        # Numbered once encoded: a record that cannot be encoded leaves no gap in the WAL.
        fields = {"seq": self.seq + 1, "at": rec.get("at") or now_iso(), **rec}
        fields["seq"] = self.seq + 1  # a record staged again keeps no stale number
        body, full = _encode_clean(fields)
        self.seq += 1
        self._pending.append(_line(body))
        return full

    def flush(self) -> None:
        """Make every staged record durable: one write, one fsync (group commit)."""
        if self._broken is not None:
            raise self._broken
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except BaseException as e:
            # Part of the batch may be on disk: nothing more may be written after it (a later
            # batch would leave damage in the middle of the log). The driver must stop;
            # resume cuts the torn tail.
            self._broken = e
            raise
        self.fsyncs += 1

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write records durably (one write, one fsync). Mutates them: sets ``seq``, ``at``."""
        for rec in records:
            full = self.stage(rec)
            rec.clear()
            rec.update(full)
        self.flush()

    def offset(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StateDir:
    def __init__(self, path: Path) -> None:
        # Absolute: agents get paths inside it and may run in another directory (workdir:).
        self.path = Path(path).absolute()

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def run(self, run_id: str) -> RunDir:
        if not run_id or "/" in run_id or run_id in (".", "..") or "\x00" in run_id:
            raise RunNotFound(f"'{run_id}' is not a run id")
        rd = RunDir(self.runs / run_id)
        if not rd.exists():
            raise RunNotFound(f"no run '{run_id}' in {self.runs}")
        return rd

    def list_runs(self) -> list[RunDir]:
        """Runs, oldest first (by creation time of their WAL)."""
        try:
            entries = [RunDir(p) for p in self.runs.iterdir()
                       if not p.name.startswith(".") and (p / WAL).exists()]
        except FileNotFoundError:
            return []

        def started(r: RunDir) -> tuple[float, str]:
            try:
                return (_birth(r), r.run_id)
            except OSError:
                return (0.0, r.run_id)

        return sorted(entries, key=started)

    def newest(self) -> RunDir:
        runs = self.list_runs()
        if not runs:
            raise RunNotFound(f"no runs in {self.runs}")
        return runs[-1]

    def new_run_id(self, pipeline: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{pipeline}-{secrets.token_hex(2)}"

    def stage_run(self, run_id: str) -> RunDir:
        """A new run's directory, built under a hidden name; ``publish`` gives it its name once
        its first records are durable, so a crash while starting leaves no half-made run."""
        makedirs(self.runs)
        self._sweep_staging()
        if (self.runs / run_id).exists():
            raise StateError(f"run '{run_id}' already exists in {self.runs}")
        return self.create_run(f".{run_id}.{secrets.token_hex(3)}.new")

    def publish(self, staged: RunDir, run_id: str) -> RunDir:
        final = self.runs / run_id
        try:
            if final.exists():
                raise OSError(f"{final} exists")
            os.rename(staged.path, final)
        except OSError:
            raise StateError(f"run '{run_id}' already exists in {self.runs}") from None
        fsync_dir(self.runs)
        return RunDir(final)

    def _sweep_staging(self) -> None:
        """Remove runs that never got past their start (their driver died before publish)."""
        import shutil

        for p in self.runs.glob(".*.new"):
            try:
                # A driver starting right now has made its directory but may not hold its
                # lock yet: only a staging dir left for a minute is a dead driver's.
                if time.time() - p.stat().st_mtime < 60:
                    continue
            except OSError:
                continue
            lock = RunLock(RunDir(p))
            try:
                lock.acquire()
            except LockHeld:
                continue  # another driver is starting that run right now
            try:
                shutil.rmtree(p, ignore_errors=True)
            finally:
                lock.release()

    def create_run(self, run_id: str) -> RunDir:
        makedirs(self.runs)
        rd = RunDir(self.runs / run_id)
        try:
            rd.path.mkdir(mode=0o700)
        except FileExistsError:
            raise StateError(f"run '{run_id}' already exists in {self.runs}") from None
        for sub in ("definition", "heartbeats", "tasks", "control"):
            (rd.path / sub).mkdir(mode=0o700)
        fd = os.open(rd.wal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fsync(fd)
        os.close(fd)
        fsync_dir(rd.path)
        fsync_dir(self.runs)
        return rd


def _birth(r: RunDir) -> float:
    # The run id starts with a UTC timestamp for runs we named; fall back on the dir's mtime
    # for ids a user chose.
    snap = r.path / "definition"
    try:
        return snap.stat().st_mtime
    except OSError:
        return r.path.stat().st_mtime


class RunLock:
    """The one-driver lock. ``acquire`` raises LockHeld naming the live holder."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        from filelock import FileLock

        self._lock = FileLock(str(run.path / "lock"), mode=0o600)

    def acquire(self) -> None:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            # The holder names itself just after taking the lock; until it has, the file may
            # still name the dead driver it replaces. Wait a moment for a live name.
            info, age = self.run.read_driver()
            deadline = time.monotonic() + 2.0
            while (info and info.get("host") == socket.gethostname()
                   and not pid_alive(int(info.get("pid", 0))) and time.monotonic() < deadline):
                time.sleep(0.02)
                info, age = self.run.read_driver()
            who = f"pid {info.get('pid')} on {info.get('host')}" if info else "another process"
            beat = f", last heartbeat {age:.1f}s ago" if age is not None else ""
            raise LockHeld(
                f"run '{self.run.run_id}' is held by {who}{beat}; wait for it, or stop it "
                "(agentctl cancel) before resuming"
            ) from None

    def release(self) -> None:
        self._lock.release()


def clean_temp_files(root: Path) -> int:
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(TMP_SUFFIX) and name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def fresh_beat(path: Path) -> None:
    """A heartbeat file as an attempt starts: made (0600), or its time set if an earlier
    attempt made it. Creating first: a task's first attempt is the common case."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        os.utime(path)


def touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)


def iter_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def driver_identity(mode: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "mode": mode, "since": now_iso()}
