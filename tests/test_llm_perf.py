"""The llm runner's hot path keeps its promises: what is cached per process (validators, the
report contract's text, parsed model strings) is what an uncached run would compute, beats go
on while a call is slow and stop when it ends, a cancelled attempt leaves no call running, and
secrets are masked in every file even though each text is scanned once per conversation.

In-process, on ``LLMRunner.run`` directly (no engine): one model host (one litellm import) for
the session, while the environment stays the same.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from llmkit import FINDINGS_SCHEMA

from agentctl import offline, prompts, redact, reports
from agentctl.models import Skill, StepSpec, report_schema
from agentctl.runners import llm
from agentctl.runners.base import Attempt, Outcome
from agentctl.runners.litellm_client import LitellmClient
from agentctl.runners.modelhost import HostClient


def _attempt(tmp_path: Path, model: str, *, with_: dict[str, Any] | None = None,
             skill: Skill | None = None, beats: list[float] | None = None,
             calls: list[dict[str, Any]] | None = None) -> Attempt:
    adir = tmp_path / "attempt"
    adir.mkdir(parents=True, exist_ok=True)
    pkt = prompts.packet("r", "t", 1, with_ or {}, {})
    loop = asyncio.get_running_loop()

    async def record(call: dict[str, Any]) -> None:
        if calls is not None:
            calls.append(call)

    return Attempt(
        run_id="r", task_id="t", attempt=1, idempotency_key="k", spec=StepSpec(), skill=skill,
        model=model, models=[model], workspace=tmp_path, workdir=tmp_path, task_dir=adir,
        input_path=adir / "input.json", output_path=adir / "report.json", prompt_path=None,
        heartbeat_path=adir / "beat", packet=pkt,
        prompt=prompts.rendered_prompt(pkt, skill) if skill else None, argv=None, env={},
        beat=(lambda: beats.append(loop.time())) if beats is not None else (lambda: None),
        record_call=record)


def _run(coro: Any) -> Any:
    async def main() -> Any:
        try:
            return await coro()
        finally:
            await llm.aclose()

    return asyncio.run(main())


def test_beats_while_a_call_is_slow_and_not_after(tmp_path: Path) -> None:
    beats: list[float] = []

    async def go() -> tuple[Outcome, int]:
        a = _attempt(tmp_path, "offline/slow?latency=900ms", beats=beats)
        out = await llm.LLMRunner().run(a)
        n = len(beats)
        await asyncio.sleep(3 * llm.BEAT_EVERY_S)  # the call's timer is gone with it
        return out, n

    out, n = _run(go)
    assert out.report is not None and out.report["status"] == "COMPLETE"
    # one beat as the call starts, then one every BEAT_EVERY_S while it runs
    assert n >= 3, beats
    assert max(b - a for a, b in itertools.pairwise(beats[1:])) < 3 * llm.BEAT_EVERY_S
    assert len(beats) == n


def _cancelled_midway(tmp_path: Path, calls_out: Callable[[], Awaitable[int]]) -> tuple[int, int]:
    """Start an attempt on a model that takes 60 s, wait until ``calls_out`` counts its call
    running, cancel the attempt, wait (20 s at most) until none runs: (calls running when
    cancelled, calls running at the end)."""
    async def go() -> tuple[int, int]:
        a = _attempt(tmp_path, "offline/slow?latency=60s")
        task = asyncio.ensure_future(llm.LLMRunner().run(a))
        during = after = 0
        for _ in range(300):  # litellm's import first, where nothing has imported it yet
            during = await calls_out()
            if during:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):  # a call that ignored its cancel would run on for a minute
            after = await calls_out()
            if not after:
                break
            await asyncio.sleep(0.1)
        return during, after

    out: tuple[int, int] = _run(go)
    ex = json.loads((tmp_path / "attempt" / "attempt-1.exchange.json").read_text())
    assert ex["outcome"] == "cancelled" and ex["paid_calls"] == 0  # written however it ends
    return out


def test_a_cancelled_attempt_leaves_no_call_running_in_the_model_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = HostClient()
    monkeypatch.setattr(llm, "_client", host)

    async def calls_out() -> int:
        # The host counts the calls it runs; a cancelled one until it has stopped.
        return int((await host.status())["calls"])

    try:
        assert _cancelled_midway(tmp_path, calls_out) == (1, 0)
    finally:
        host.stop()


def _in_offline_model(coro: Any) -> bool:
    """Whether ``coro`` is awaiting, however deep, the offline provider's own coroutine (the
    call is past litellm's setup, which it runs in a thread of the loop's pool)."""
    while coro is not None:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is not None and code is offline._acompletion.__code__:
            return True
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return False


# litellm's first call in a process imports a module whose TypedDict pydantic warns about;
# pytest turns that warning into an error (litellm then calls it a connection error). Hosts
# run outside pytest's filters; this is the one test of calls in pytest's own process.
@pytest.mark.filterwarnings("ignore:Item .* on TypedDict class")
def test_a_cancelled_attempt_leaves_no_call_running_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "_client", LitellmClient())  # AGENTCTL_MODEL_HOST=0's client

    async def calls_out() -> int:
        return len([t for t in asyncio.all_tasks() if _in_offline_model(t.get_coro())])

    assert _cancelled_midway(tmp_path, calls_out) == (1, 0)


def test_secrets_are_masked_in_the_exchange(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + "x" * 16
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    redact.reset()
    try:
        calls: list[dict[str, Any]] = []

        async def go() -> Outcome:
            a = _attempt(tmp_path, "offline/echo", with_={"note": f"the token is {secret}"},
                         calls=calls)
            return await llm.LLMRunner().run(a)

        out = _run(go)
    finally:
        redact.reset()
    assert out.report is not None
    files = sorted((tmp_path / "attempt").iterdir())
    assert [f.name for f in files] == ["attempt-1.exchange.json"]  # one call: one file, no temp files
    text = files[0].read_text()
    assert secret not in text and "[REDACTED]" in text
    ex = json.loads(text)
    # the request is the conversation's first messages, masked, and the call's parameters
    [entry] = ex["calls"]
    assert entry["sent_messages"] == 2 and ex["messages"][1]["role"] == "user"
    assert "the token is [REDACTED]" in ex["messages"][1]["content"]
    assert entry["params"] == {"model": "offline/echo", "response_format": {"type": "json_object"}}
    assert entry["request_hash"] == calls[0]["request_hash"]


def test_a_schema_gets_one_validator_that_reads_it_as_it_is() -> None:
    schema = json.loads(json.dumps(FINDINGS_SCHEMA))
    good = {"status": "COMPLETE", "summary": "s", "output": offline.minimal_instance(schema)}
    assert reports.validate_report(good, schema)[1] == []
    v = reports._validator(schema)
    assert reports._validator(schema) is v
    assert reports._validator(json.loads(json.dumps(schema))) is not v  # another object
    schema["properties"]["confidence"]["minimum"] = 2  # changed in place: seen at once
    report, problems = reports.validate_report(good, schema)
    assert report is None and problems and problems[0].startswith("output.confidence")


@pytest.mark.parametrize("schema", [None, FINDINGS_SCHEMA])
def test_the_contract_in_the_prompt_is_the_schema_as_it_is(schema: dict[str, Any] | None) -> None:
    skill = None
    if schema is not None:
        schema = json.loads(json.dumps(schema))
        skill = Skill(name="s", description="d", body="b", path=Path("s"), output_schema=schema)
    pkt = prompts.packet("r", "t", 1, {"n": 1}, {})
    for _ in range(2):
        text = prompts.user_message(pkt, skill)
        assert json.dumps(report_schema(schema), indent=2) in text
    if skill is not None and skill.output_schema is not None:
        skill.output_schema["required"] = ["findings"]  # changed in place: not shown stale
        text = prompts.user_message(pkt, skill)
        assert json.dumps(report_schema(skill.output_schema), indent=2) in text
        assert '"required": [\n        "findings"\n      ]' in text


def test_a_model_string_is_parsed_once() -> None:
    raw = "offline/echo?latency=10ms&temperature=0.5"
    spec = llm._spec(raw)
    assert llm._spec(raw) is spec and spec == llm.parse_model(raw)
    with pytest.raises(llm.ModelError):
        llm._spec("openai/gpt-4o?colour=red")


def test_the_skill_body_is_masked_by_the_redactor_of_the_moment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body's masked text is shared between attempts, never between redactors: a value
    that became secret is masked at once."""
    secret = "b0dy-" + "y" * 16
    skill = Skill(name="s", description="d", body=f"Use the key {secret} wisely.", path=Path("s"))
    monkeypatch.delenv("MY_SERVICE_TOKEN", raising=False)

    def attempt_files(n: int) -> str:
        async def go() -> Outcome:
            return await llm.LLMRunner().run(_attempt(tmp_path / str(n), "offline/echo", skill=skill))

        assert _run(go).report is not None
        return "".join(f.read_text() for f in sorted((tmp_path / str(n) / "attempt").glob("*.json")))

    redact.reset()
    try:
        assert secret in attempt_files(1)  # not a secret yet
        monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
        redact.reset()
        for n in (2, 3):
            text = attempt_files(n)
            assert secret not in text and "Use the key [REDACTED] wisely." in text
    finally:
        redact.reset()


def test_exchange_json_is_masked_on_its_text_and_stays_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """exchange.json is masked on its encoded text; a secret's digits inside a number would
    break the JSON there, so then its strings are masked one by one."""
    monkeypatch.setenv("MY_SERVICE_TOKEN", "73915284")
    redact.reset()
    try:
        obj = {"cost_usd": 0.0007391528466, "messages": [{"content": 'pin "73915284" sk-' + "a" * 20}]}
        out = json.loads(llm._masked_json(obj))
        assert out == {"cost_usd": 0.0007391528466,
                       "messages": [{"content": 'pin "[REDACTED]" [REDACTED]'}]}
        plain = {"messages": [{"content": "nothing to hide"}], "tokens": 12}
        assert llm._masked_json(plain) == json.dumps(plain, ensure_ascii=False) + "\n"
    finally:
        redact.reset()


@pytest.mark.parametrize("text", [
    "no secret here", "Bearer abcdefghijklmnop1234", "bearer short", "key sk-proj-" + "b" * 24,
    "ghp_" + "c" * 24 + " and gho_" + "d" * 24, "AKIA" + "E" * 16, "hf_" + "f" * 22,
    "task-sk-risk", "value s3cr3t-value-xyz inside", "xoxb-1234567890-abc", "AIza" + "g" * 35])
def test_the_redactors_shortcut_masks_what_its_regex_masks(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_PASSWORD", "s3cr3t-value-xyz")
    r = redact.Redactor.from_environ()
    assert r.text(text) == r._re.sub(redact.MASK, text)
