"""The write-ahead log: records, torn tails, corruption in the middle (DESIGN.md 6.3)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Project, check_run_files

from agentctl import store
from agentctl.errors import CorruptLogError, StateError

# ---------------------------------------------------------------------- records, unit


def test_encode_decode_round_trip() -> None:
    rec = {"seq": 7, "type": "attempt_ended", "task": "café", "report": {"summary": "a\nb"}}
    line = store.encode_record(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["crc"] == f"{__import__('zlib').crc32(store._dumps(rec).encode()):08x}"
    assert store.decode_record(line) == rec
    assert store.decode_record(line.rstrip(b"\n")) == rec


@pytest.mark.parametrize("damage", ["flip", "drop_crc", "bad_crc", "no_seq", "not_object",
                                    "not_json", "not_utf8", "truncated"])
def test_decode_refuses_anything_but_a_whole_intact_record(damage: str) -> None:
    good = store.encode_record({"seq": 3, "type": "run_ended", "status": "complete"})
    line = {
        "flip": good.replace(b"complete", b"compleTe"),
        "drop_crc": json.dumps({"seq": 3, "type": "run_ended"}).encode() + b"\n",
        "bad_crc": good.replace(json.loads(good)["crc"].encode(), b"00000000"),
        "no_seq": store.encode_record({"type": "run_ended"}),
        "not_object": b"[1, 2]\n",
        "not_json": b"{\"seq\": 3, \n",
        "not_utf8": b"\xff\xfe" + good[2:],
        "truncated": good[: len(good) // 2],
    }[damage]
    assert store.decode_record(line) is None


def _wal(tmp_path: Path, *records: dict[str, object]) -> Path:
    path = tmp_path / "wal.jsonl"
    path.write_bytes(b"".join(store.encode_record(r) for r in records))
    return path


def _recs(n: int) -> list[dict[str, object]]:
    return [{"seq": i, "type": "x", "n": i} for i in range(1, n + 1)]


def test_scan_reads_every_record_and_finds_no_tear(tmp_path: Path) -> None:
    path = _wal(tmp_path, *_recs(5))
    scan = store.scan_wal(path)
    assert [r["seq"] for r in scan.records] == [1, 2, 3, 4, 5]
    assert (scan.good_bytes, scan.torn_bytes) == (path.stat().st_size, 0)


def test_scan_of_an_empty_log_and_of_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "wal.jsonl"
    path.write_bytes(b"")
    scan = store.scan_wal(path)
    assert (scan.records, scan.good_bytes, scan.torn_bytes) == ([], 0, 0)
    with pytest.raises(StateError, match="no write-ahead log"):
        store.scan_wal(tmp_path / "nope.jsonl")


def test_scan_cuts_a_torn_tail_at_every_offset(tmp_path: Path) -> None:
    recs = _recs(3)
    whole = b"".join(store.encode_record(r) for r in recs)
    head = len(whole) - len(store.encode_record(recs[-1]))
    path = tmp_path / "wal.jsonl"
    for cut in range(head, len(whole)):
        path.write_bytes(whole[:cut])
        scan = store.scan_wal(path)
        assert [r["seq"] for r in scan.records] == [1, 2], cut
        assert (scan.good_bytes, scan.torn_bytes) == (head, cut - head)


def test_scan_treats_a_bad_last_line_and_zero_fill_as_a_torn_tail(tmp_path: Path) -> None:
    path = _wal(tmp_path, *_recs(2))
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 300)  # a power loss can leave the file longer, filled with zeros
    scan = store.scan_wal(path)
    assert (len(scan.records), scan.good_bytes, scan.torn_bytes) == (2, size, 300)


@pytest.mark.parametrize("damage", ["flip", "drop", "repeat", "swap"])
def test_scan_refuses_damage_in_the_middle(tmp_path: Path, damage: str) -> None:
    lines = [store.encode_record(r) for r in _recs(5)]
    if damage == "flip":
        lines[1] = lines[1].replace(b'"n":2', b'"n":3')
    elif damage == "drop":
        del lines[2]
    elif damage == "repeat":
        lines.insert(2, lines[1])
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path = tmp_path / "wal.jsonl"
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptLogError, match=str(path)):
        store.scan_wal(path)


def test_scan_from_an_offset_checks_the_sequence(tmp_path: Path) -> None:
    recs = _recs(4)
    path = _wal(tmp_path, *recs)
    start = len(store.encode_record(recs[0])) + len(store.encode_record(recs[1]))
    assert [r["seq"] for r in store.scan_wal(path, start=start, start_seq=2).records] == [3, 4]
    with pytest.raises(CorruptLogError, match="expected 2"):
        store.scan_wal(path, start=start, start_seq=1)


def test_journal_appends_numbered_records_durably(tmp_path: Path) -> None:
    run = store.RunDir(tmp_path)
    j = store.Journal(run, next_seq=1)
    try:
        batch: list[dict[str, object]] = [{"type": "a"}, {"type": "b"}]
        j.append(batch)
        j.append([{"type": "c"}])
        j.append([])
        assert j.fsyncs == 2
        assert [r["seq"] for r in batch] == [1, 2]  # the caller sees what was written
        assert j.offset() == run.wal.stat().st_size
    finally:
        j.close()
    records = store.scan_wal(run.wal).records
    assert [(r["seq"], r["type"]) for r in records] == [(1, "a"), (2, "b"), (3, "c")]
    assert all(isinstance(r["at"], str) for r in records)
    assert stat.S_IMODE(run.wal.stat().st_mode) == 0o600


# ---------------------------------------------------------------------- through the CLI


def _finished_run(project: Project) -> store.RunDir:
    project.behave("b", effect=True)
    project.pipeline({"a": {"effects": "read-only"}, "b": {"needs": "a", "effects": "mutating"}})
    r = project.cli("run", "p.yaml", "--run-id", "base")
    assert r.returncode == 0, r.stderr
    return project.run_dir("base")


def _lines(run: store.RunDir) -> list[bytes]:
    return run.wal.read_bytes().splitlines(keepends=True)


def _copy_with_wal(project: Project, base: store.RunDir, run_id: str, wal: bytes) -> store.RunDir:
    dest = base.path.parent / run_id
    shutil.copytree(base.path, dest)
    (dest / "wal.jsonl").write_bytes(wal)
    return store.RunDir(dest)


def test_torn_tail_at_every_byte_of_the_last_record(project: Project) -> None:
    """The driver died while writing its last record (run_ended): whatever prefix of it
    reached the disk, ``status`` reads the run and ``resume`` finishes it."""
    base = _finished_run(project)
    lines = _lines(base)
    assert json.loads(lines[-1])["type"] == "run_ended"
    head = b"".join(lines[:-1])
    cuts = {f"cut-{k:03d}": head + lines[-1][:k] for k in range(len(lines[-1]))}
    cuts["zero-fill"] = head + b"\0" * 4096
    for rid, wal in cuts.items():
        _copy_with_wal(project, base, rid, wal)

    # Every copy through `status` with no RUN (it loads each run of the state dir)...
    runs = project.status()["runs"]
    assert len(runs) == len(cuts) + 1
    assert sorted(r["status"] for r in runs) == ["complete"] + ["crashed"] * len(cuts)
    assert {(r["tasks"], r["complete"]) for r in runs} == {(2, 2)}
    # ...and a few through `status RUN`.
    for rid in ("cut-000", "cut-001", f"cut-{len(lines[-1]) - 1:03d}", "zero-fill"):
        data = project.status(rid)
        assert data["status"] == "crashed", (rid, data)
        assert data["totals"] == {"tasks": 2, "complete": 2, "tokens": 0, "cost_usd": 0.0}

    def resume(rid: str) -> tuple[str, int, str]:
        r = project.cli("resume", rid)
        return rid, r.returncode, r.stderr

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(resume, cuts))
    for rid, code, err in results:
        assert code == 0, (rid, err)
        run = store.RunDir(base.path.parent / rid)
        check_run_files(run)
        records = store.scan_wal(run.wal).records
        assert records[-1]["type"] == "run_ended" and records[-1]["status"] == "complete", rid
        if rid != "cut-000":
            assert "cut a torn record" in err, (rid, err)
    assert len(project.executions("a")) == 1 and len(project.executions("b")) == 1
    final = project.status()["runs"]
    assert {r["status"] for r in final} == {"complete"}


def test_status_reads_every_torn_copy(project: Project) -> None:
    """``status`` with no RUN loads every run of the state dir: each torn copy is readable."""
    base = _finished_run(project)
    lines = _lines(base)
    head = b"".join(lines[:-2])  # cut into the attempt_ended of 'b'
    last = lines[-2]
    assert json.loads(last)["type"] == "attempt_ended"
    for k in range(len(last)):
        _copy_with_wal(project, base, f"cut-{k:03d}", head + last[:k])
    runs = project.status()["runs"]
    assert len(runs) == len(last) + 1
    assert sorted(r["status"] for r in runs) == ["complete"] + ["crashed"] * len(last)
    assert sorted((r["tasks"], r["complete"]) for r in runs) == [(2, 1)] * len(last) + [(2, 2)]


@pytest.mark.parametrize("k", [0, 1, -1])
def test_torn_completion_of_a_mutating_task_reruns_it_with_the_same_key(
        project: Project, k: int) -> None:
    base = _finished_run(project)
    lines = _lines(base)
    last = lines[-2]  # attempt_ended of 'b'; run_ended follows it
    run = _copy_with_wal(project, base, "torn", b"".join(lines[:-2]) + last[: k % len(last)])
    r = project.cli("resume", "torn")
    assert r.returncode == 0, r.stderr
    check_run_files(run)
    runs_of_b = project.executions("b")
    assert len(runs_of_b) == 2  # the completion was lost, so 'b' ran again...
    assert runs_of_b[0]["key"] == runs_of_b[1]["key"]  # ...with the same idempotency key
    assert len(project.effects_of("b")) == 1  # and the side effect happened once
    assert len(project.executions("a")) == 1
    assert project.status("torn")["status"] == "complete"


@pytest.mark.parametrize("damage", ["flip", "drop", "repeat"])
def test_damage_in_the_middle_is_refused_by_status_and_resume(project: Project,
                                                              damage: str) -> None:
    run = _finished_run(project)
    lines = _lines(run)
    if damage == "flip":
        i = lines[3].index(b'"attempt":1') + 10
        lines[3] = lines[3][:i] + b"2" + lines[3][i + 1:]
    elif damage == "drop":
        del lines[3]
    else:
        lines.insert(3, lines[3])
    damaged = b"".join(lines)
    run.wal.write_bytes(damaged)

    st = project.cli("status", "base", "--json")
    assert st.returncode == 3, (st.stdout, st.stderr)
    assert st.stdout == ""
    assert str(run.wal) in st.stderr
    assert "Traceback" not in st.stderr and len(st.stderr.strip().splitlines()) == 1

    res = project.cli("resume", "base")
    assert res.returncode == 3, res.stderr
    assert str(run.wal) in res.stderr
    assert run.wal.read_bytes() == damaged  # refused, not repaired by guessing

    listing = project.status()["runs"]
    assert [r["status"] for r in listing] == ["unreadable"]
    assert str(run.wal) in listing[0]["error"]


def test_a_record_that_cannot_be_encoded_leaves_no_gap(tmp_path: Path) -> None:
    """A record that fails to encode is refused without using up a sequence number; a lone
    surrogate (valid in JSON text, not in UTF-8) is written as '?' rather than crash."""
    journal = store.Journal(store.RunDir(tmp_path), next_seq=1)
    with pytest.raises(TypeError):
        journal.stage({"type": "attempt_ended", "task": "t", "bad": {1, 2}})
    written = journal.stage({"type": "attempt_ended", "task": "t", "message": "a\ud800b"})
    journal.flush()
    journal.close()
    (back,) = store.scan_wal(tmp_path / "wal.jsonl").records
    assert back["seq"] == 1 and back["message"] == "a?b" and back == written


def test_after_a_failed_write_nothing_more_is_written(tmp_path: Path) -> None:
    """Part of a batch may be on disk after a failed write: a later batch must not follow
    it (that would be damage in the middle of the log), so the journal refuses to go on."""
    journal = store.Journal(store.RunDir(tmp_path), next_seq=1)
    journal.stage({"type": "run_ended", "status": "complete"})
    os.close(journal._fd)  # the write fails: EBADF
    with pytest.raises(OSError):
        journal.flush()
    with pytest.raises(OSError):
        journal.stage({"type": "run_ended", "status": "complete"})
    journal._fd = -1
