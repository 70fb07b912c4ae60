"""Secrets never reach the state directory, the logs or the messages (issue 4, item 7).

Two real ``agentctl run`` processes, with a key and a token planted in their environment:
one run succeeds (a leaky model repeats both in its report; a command agent prints both),
one fails (the provider's 401 error echoes the Authorization header back, as real ones do).
Then every file of both runs, both processes' stdout and stderr, and ``status --json`` are
scanned for the values -- and for a fragment of the key, so a partial leak fails too.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeopenai import FakeOpenAI, Reply
from harness import PY, Project
from llmkit import FINDINGS_SCHEMA, LLMProject

from agentctl import offline
from agentctl.store import iter_files

KEY = "sk-proj-" + secrets.token_hex(20)  # caught by value and by pattern
TOKEN = secrets.token_hex(12)  # caught by value only (MY_SERVICE_TOKEN: a secret's name)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


def test_planted_secrets_appear_nowhere(project: Project, server: FakeOpenAI, tmp_path: Path) -> None:
    leaky = {"status": "COMPLETE", "summary": f"Found {KEY} in .env and {TOKEN} in the CI logs.",
             "output": offline.minimal_instance(FINDINGS_SCHEMA)}
    server.script("gpt-4o-mini", Reply(content=leaky))
    server.script("locked", Reply(status=401, error="Incorrect API key provided"))
    server.echo_auth_in_errors = True

    lp = LLMProject(tmp_path)
    ok = lp.pipeline({
        "explore": {"model": f"openai/gpt-4o-mini?api_base={server.url}"},
        "script": {"skill": None, "command": [PY, "-c", "import os, sys; print(os.environ['OPENAI_API_KEY']); "
                                         "print(os.environ['MY_SERVICE_TOKEN'], file=sys.stderr)"]},
    }, name="ok")
    bad = lp.pipeline({"explore": {"model": f"openai/locked?api_base={server.url}"}}, name="bad")
    project.env.update(OPENAI_API_KEY=KEY, MY_SERVICE_TOKEN=TOKEN)
    good_run = project.spawn("run", str(ok), "--run-id", "ok")
    bad_run = project.spawn("run", str(bad), "--run-id", "bad")
    assert good_run.wait() == 0, good_run.describe()
    assert bad_run.wait() == 1, bad_run.describe()

    # The secrets were in play: the server got the key, and both runs logged a masked value.
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    err = project.status("bad")["tasks"][0]["error"]
    assert "authentication failed (401)" in err["message"] and "[REDACTED]" in err["message"]
    for rid in ("ok", "bad"):
        assert b"[REDACTED]" in project.run_dir(rid).wal.read_bytes()

    texts: dict[str, bytes] = {}
    for path in iter_files(project.state):
        texts[str(path)] = path.read_bytes()
    for path in project.logs.iterdir():  # the drivers' stdout and stderr
        texts[str(path)] = path.read_bytes()
    # A message that quotes what the user typed goes through the same net.
    typo = project.cli("status", KEY)
    assert typo.returncode == 3 and "no run '[REDACTED]'" in typo.stderr
    texts["status KEY"] = (typo.stdout + typo.stderr).encode()
    for rid in ("ok", "bad"):
        texts[f"status {rid}"] = json.dumps(project.status(rid)).encode()
        texts[f"status table {rid}"] = project.cli("status", rid).stdout.encode()
    assert any("exchange.json" in name for name in texts) and any("stdout.log" in name for name in texts)
    for needle in (KEY, TOKEN, KEY[10:26]):
        leaks = [name for name, data in texts.items() if needle.encode() in data]
        assert not leaks, f"{needle[:12]}... leaked into {leaks}"


@pytest.mark.parametrize("secret, said, masked", [
    ('pa"ss\\word-1234', 'the password is pa"ss\\word-1234, said the agent', True),  # JSON escapes it
    ("ünïcode-secret", "key=ünïcode-secret", True),
    # The text holds a newline then "abcdefgh": in JSON, `\nabcdefgh` contains the secret's
    # letters, but the value does not. Masking the text would cut the escape in two.
    ("nabcdefgh", "line one\nabcdefgh", False),
])
def test_wal_lines_mask_secrets_in_their_json_form(tmp_path: Path, secret: str, said: str,
                                                   masked: bool) -> None:
    """The WAL masks secrets on the encoded line; a secret that JSON escapes still matches,
    and a match that cuts an escape sequence in two falls back to masking value by value:
    every line stays a valid, checksummed record, and the caller's record is what was written."""
    from agentctl import redact, store

    redact._default = redact.Redactor([secret])
    try:
        journal = store.Journal(store.RunDir(tmp_path), next_seq=1)
        rec = {"type": "attempt_ended", "task": "t", "message": said, "report": {"summary": said}}
        journal.append([rec])
        journal.close()
    finally:
        redact.reset()
    (back,) = store.scan_wal(tmp_path / "wal.jsonl").records
    assert back == rec
    if masked:
        assert back["message"] == said.replace(secret, redact.MASK)
        assert back["report"]["summary"] == back["message"]
        assert secret.encode() not in (tmp_path / "wal.jsonl").read_bytes()
    else:
        assert back["message"] == said


def test_a_secret_holding_json_punctuation_never_matches_across_members(tmp_path: Path) -> None:
    from agentctl import redact, store

    redact._default = redact.Redactor(['a","b":"c'])
    try:
        journal = store.Journal(store.RunDir(tmp_path), next_seq=1)
        rec = {"type": "note", "p": "xa", "b": "cy"}  # its JSON text holds the raw value
        journal.append([rec])
        journal.close()
    finally:
        redact.reset()
    (back,) = store.scan_wal(tmp_path / "wal.jsonl").records
    assert (back["p"], back["b"]) == ("xa", "cy")
