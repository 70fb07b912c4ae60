"""The ``llm`` runner: one attempt of an llm task is a conversation with a model, through litellm.

The conversation is held here, in the driver; each model call is made by a model client
(``client()``): the model host process (``agentctl.runners.modelhost``), where litellm is
imported and runs on a core of its own, or, with ``AGENTCTL_MODEL_HOST=0`` or where the driver
may use one CPU only, litellm in this process (``agentctl.runners.litellm_client``, the only
module that imports litellm). This module never imports litellm: a run with no llm task never
loads it, and ``preflight`` starts the client (and with it litellm's import) as soon as it
sees an llm task.

One attempt, in order:

1. The system message is the skill's body; the user message is ``prompts.user_message``: the
   task's inputs, the reports of the tasks it needs, and the report contract.
2. Each turn sends the conversation to the task's models in order (``attempt.models``: the
   model and its fallbacks). A retryable error (429, 5xx, timeout, connection) is retried
   ``retries`` times with exponential backoff and jitter (a ``Retry-After`` from the server
   wins), then the next model is tried. A non-retryable error (authentication, bad request,
   context too long) ends the attempt at once, naming what it was.
3. A response is logged durably (``attempt.record_call``: a WAL record, fsync'd) *before* it
   is used. A request whose response an earlier attempt of the task already paid for
   (``attempt.cached_calls``, keyed by the request's hash) is not sent again.
4. After each call the attempt's budget is checked: over it, a valid report is still taken
   (the money is spent), but no further call is made.
5. The reply must be a valid report. One that is not goes back to the model with the
   problems, at most ``max_repairs`` times; then the task fails as ``invalid_output``, not
   retried (the model has had its chances, and a new attempt would replay the same replies).
6. Everything sent and received is kept in the task's directory, secrets masked, in one
   file: ``exchange.json``, the conversation (``messages``) and an entry per request in
   ``calls`` (failed tries and reused responses too: the response or error, tokens, cost,
   the backoff that followed, and the request itself as ``sent_messages`` -- it sent the
   first that many messages -- and ``params``). It is written when the attempt ends, however
   it ends, and also before each further call of an attempt that has made one already (a
   retry, a fallback, a repair turn), marked ``"outcome": "running"``: a driver killed
   mid-conversation leaves the earlier calls behind. An attempt that makes one call writes it
   once. (Earlier versions also wrote a ``call-NNN.json`` per request; ``agentctl logs`` and
   ``trace`` still read those of old runs.)

Model strings are litellm's, with agentctl's options after a ``?``::

    openai/gpt-4o-mini?api_base=http://127.0.0.1:8080/v1&timeout=30s&retries=3

``api_base`` (where to send; litellm also reads ``OPENAI_API_BASE`` and friends), ``timeout``
(per call), ``retries`` (of a retryable error, per model and turn; default 2), ``backoff``
(the first wait, default 1s; it doubles, capped at 30 s), and the model parameters
``temperature``, ``max_tokens``, ``seed``, ``top_p``. ``offline/...`` models take their own
options too (see ``agentctl.offline``). The request hash covers the model, messages and
parameters, not where the request is sent nor how it is retried.

Test hook: ``AGENTCTL_TEST_PAUSE_AFTER_CALL=<seconds>[@<n>]`` sleeps that long right after a
response is logged and before it is used (after the attempt's ``n``-th paid response only,
with ``@n``), so a test can SIGKILL the driver at that point.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl

from agentctl import offline, prompts, redact
from agentctl.errors import DefinitionError, Diagnostic, RunnerError
from agentctl.models import parse_duration
from agentctl.reports import validate_report
from agentctl.runners.base import Attempt, Outcome
from agentctl.store import write_atomic

T = TypeVar("T")

PAUSE_ENV = "AGENTCTL_TEST_PAUSE_AFTER_CALL"
HOST_ENV = "AGENTCTL_MODEL_HOST"  # 1: the model host process; 0: litellm in the driver
BACKOFF_CAP_S = 30.0
BEAT_EVERY_S = 0.25  # while waiting on a model: well inside any sane heartbeat interval
GENERIC_SYSTEM = ("You are one agent in a pipeline. Do the task described by your inputs, "
                  "and answer with the report asked for.")
JSON_MODE = {"type": "json_object"}

# --------------------------------------------------------------------------- the model client


class ModelClient(Protocol):
    """Where model calls are made: the model host process, or litellm in this process. What
    crosses is plain JSON (see ``agentctl.runners.litellm_client``)."""

    def start(self) -> None: ...
    def is_ready(self) -> bool: ...
    async def ready(self) -> None: ...
    async def call(self, kwargs: dict[str, Any]) -> dict[str, Any]: ...
    async def info(self, model: str, api_base: str | None) -> dict[str, Any]: ...
    def info_sync(self, model: str, api_base: str | None) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...


_client: ModelClient | None = None


def use_host() -> bool:
    """Whether model calls go to a host process: ``AGENTCTL_MODEL_HOST`` (1 or 0) says so;
    unset, only where this process may run on two CPUs or more. On one, the host's calls and
    the driver's work take turns on it, and the pipe is pure cost (measured with ``taskset
    -c 0``: 1.61-1.65x the plain loop with a host, 1.30-1.32x with litellm in the driver)."""
    value = os.environ.get(HOST_ENV, "").strip().lower()
    if value in ("0", "off", "no", "false"):
        return False
    if value in ("1", "on", "yes", "true"):
        return True
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return cpus >= 2


def client() -> ModelClient:
    """This process's model client (made at first use; ``use_host`` decides which)."""
    global _client
    if _client is None:
        made: ModelClient
        if not use_host():
            from agentctl.runners.litellm_client import LitellmClient

            made = LitellmClient()
        else:
            from agentctl.runners.modelhost import HostClient

            made = HostClient()
        _client = made
    return _client


async def aclose() -> None:
    """At the end of a run, while its event loop still runs: the client lets go of it."""
    if _client is not None:
        await _client.aclose()


# --------------------------------------------------------------------------- model strings

PASS_PARAMS: dict[str, type] = {"temperature": float, "max_tokens": int, "seed": int, "top_p": float}
RUNNER_OPTS = ("api_base", "timeout", "retries", "backoff")


class ModelError(ValueError):
    """A model string agentctl cannot use (one line, for the user)."""


@dataclass(frozen=True)
class ModelSpec:
    raw: str  # as written in the pipeline
    model: str  # as sent to litellm (an offline model keeps its own options)
    offline: bool
    api_base: str | None = None
    timeout_s: float | None = None
    retries: int = 2
    backoff_s: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


def parse_model(raw: str) -> ModelSpec:
    name, _, query = raw.partition("?")
    if not name:
        raise ModelError(f"model '{raw}' has no name")
    is_offline = name.startswith(offline.PROVIDER + "/")
    opts: dict[str, str] = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    kept: dict[str, str] = {}
    spec: dict[str, Any] = {"params": {}}
    for key, value in opts.items():
        try:
            if key == "api_base":
                spec["api_base"] = value
            elif key == "timeout":
                spec["timeout_s"] = parse_duration(value)
            elif key == "retries":
                spec["retries"] = int(value)
                if spec["retries"] < 0:
                    raise ValueError("must be 0 or more")
            elif key == "backoff":
                spec["backoff_s"] = parse_duration(value)
            elif key in PASS_PARAMS:
                spec["params"][key] = PASS_PARAMS[key](value)
            elif is_offline:
                kept[key] = value
            else:
                known = ", ".join([*RUNNER_OPTS, *PASS_PARAMS])
                raise ModelError(f"model '{raw}': unknown option '{key}' (known: {known})")
        except (ValueError, TypeError) as e:
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"model '{raw}': {key}={value}: {e}") from None
    model = name
    if is_offline:
        model = name + ("?" + "&".join(f"{k}={v}" for k, v in kept.items()) if kept else "")
        try:
            offline.parse(model)
        except offline.OfflineSpecError as e:
            raise ModelError(str(e)) from None
    return ModelSpec(raw=raw, model=model, offline=is_offline, **spec)


_specs: dict[str, ModelSpec] = {}


def _spec(raw: str) -> ModelSpec:
    """``parse_model``, once per model string per process (a spec is never changed)."""
    spec = _specs.get(raw)
    if spec is None:
        if len(_specs) >= 256:
            _specs.clear()
        spec = _specs[raw] = parse_model(raw)
    return spec


def request_hash(request: dict[str, Any]) -> str:
    """The identity of a request: model, messages and parameters, canonically serialised."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- preflight


def preflight(defn: Any, model_override: str | None = None) -> None:
    """Before a run starts: every llm task has a model agentctl understands, and the keys
    its models need are set; all the problems at once. Starts the model client (the host
    process, which imports litellm at once) when the run has llm tasks, and never when it
    has none."""
    problems: dict[str, list[str]] = {}  # task -> its problems, in task order
    chains: dict[str, list[ModelSpec]] = {}
    for task_id, role, step in defn.steps():  # loops' makers and checkers too
        if defn.runner_for(step) != "llm":
            continue
        tid = f"{task_id}.loop.{role}" if role else task_id
        problems[tid] = []
        m = defn.model_for(step, model_override)
        if m is None:
            problems[tid].append("no model for this llm task: set `model:` on it or "
                                 "`defaults.model`, or pass --model")
            continue
        chains[tid] = []
        for raw in defn.pipeline.models.get(m, [m]):
            try:
                chains[tid].append(parse_model(raw))
            except ModelError as e:
                problems[tid].append(str(e))
    if not problems:
        return
    online = {s.raw: s for specs in chains.values() for s in specs if not s.offline}
    if online:  # only litellm knows which keys a model needs: ask it (it is imported now)
        models = client()
        env = {raw: models.info_sync(spec.model, spec.api_base)["problem"]
               for raw, spec in online.items()}
        for tid, specs in chains.items():
            problems[tid] += [p for p in (env.get(s.raw) for s in specs) if p]
    where = str(defn.path)
    diags = [Diagnostic(where, None, None, f"tasks.{tid}: {p}")
             for tid, ps in problems.items() for p in ps]
    if diags:
        raise DefinitionError(diags)
    client().start()  # only now: a refused run exits at once, without waiting for an import


# --------------------------------------------------------------------------- the runner


class LLMRunner:
    max_repairs = 2

    async def run(self, attempt: Attempt) -> Outcome:
        models = client()
        if not models.is_ready():
            try:
                await _ready(models, attempt)
            except RunnerError as e:  # no host could be started
                return Outcome(category=e.category, message=redact.default().text(e.message),
                               retryable=e.retryable)
        conv = _Conversation(attempt, models, self.max_repairs)
        try:
            report = await conv.run()
        except RunnerError as e:
            conv.ending = e.category
            return Outcome(category=e.category, message=redact.default().text(e.message),
                           retryable=e.retryable, details=conv.details())
        except BaseException as e:  # a timeout or a cancel (or a bug): still it ended
            conv.ending = "cancelled" if isinstance(e, asyncio.CancelledError) else "error"
            raise
        finally:
            conv.save()
        # validate_report's own result (the scheduler would validate it again otherwise)
        return Outcome(report=report, validated=True, details=conv.details())

    async def aclose(self) -> None:
        await aclose()


async def _ready(models: ModelClient, attempt: Attempt) -> None:
    """Wait for litellm's import (seconds, the first time), beating meanwhile: a slow import
    is not a hung agent, and not a slow model either (no call is out yet)."""
    task = asyncio.ensure_future(models.ready())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=BEAT_EVERY_S)
            attempt.beat()
            if done:
                return task.result()
    finally:
        task.cancel()


@dataclass
class _Failure:
    kind: str
    retryable: bool
    message: str
    retry_after: float | None = None


class _Conversation:
    def __init__(self, attempt: Attempt, models: ModelClient, max_repairs: int) -> None:
        self.a = attempt
        self.models = models
        self.max_repairs = max_repairs
        self.entries: list[dict[str, Any]] = []  # every request made, for exchange.json
        self.saved = 0  # how many of them the last exchange.json written holds
        self.on_disk = False  # whether an exchange.json of this attempt was written
        self.paid = 0  # responses paid for in this attempt
        self.reused = 0
        self.tokens = 0
        self.cost = 0.0
        self.answered_by: str | None = None
        self.current = 0  # index in the model chain: later turns start where the last answered
        self.turns = 0
        self.problems: list[str] = []
        self.ending: str = "running"
        skill = attempt.skill
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": skill.body.strip() if skill else GENERIC_SYSTEM},
            {"role": "user", "content": _user_message(attempt)},
        ]
        self.output_schema = skill.output_schema if skill else None
        pause, _, nth = (os.environ.get(PAUSE_ENV) or "").partition("@")
        self.pause = float(pause or 0)
        self.pause_at = int(nth) if nth else None  # after every paid response, if None
        self._rng: random.Random | None = None  # for backoff jitter; seeded when first needed

    # ------------------------------------------------------------------ the turns

    async def run(self) -> dict[str, Any]:
        if not self.a.models:
            raise RunnerError("provider_error", "no model for this llm task: set `model:` on "
                              "the task or `defaults.model`, or pass --model")
        specs = []
        for raw in self.a.models:
            try:
                specs.append(_spec(raw))
            except ModelError as e:
                raise RunnerError("provider_error", str(e)) from None
        for turn in range(self.max_repairs + 1):
            self.turns = turn + 1
            content, over_budget = await self._turn(specs, turn)
            raw, problems = _parse_reply(content)
            if raw is not None:
                report, problems = validate_report(raw, self.output_schema)
                if report is not None:
                    self.ending = "report"
                    self.messages.append({"role": "assistant", "content": content})
                    return report
            self.problems = problems
            self.messages.append({"role": "assistant", "content": content})
            if over_budget:
                raise RunnerError("budget", self._budget_text() + "; the last reply is not a "
                                  "valid report (" + "; ".join(problems[:3]) + ")")
            if turn < self.max_repairs:
                self.messages.append({"role": "user", "content": _repair_text(problems)})
        raise RunnerError("invalid_output", f"the reply is not a valid report after "
                          f"{self.max_repairs} repair(s): " + "; ".join(self.problems[:5]))

    async def _turn(self, specs: list[ModelSpec], turn: int) -> tuple[str, bool]:
        """One answer to the conversation so far: (its text, whether the budget is spent)."""
        failures: list[_Failure] = []
        for index in range(self.current, len(specs)):
            spec = specs[index]
            info = None if spec.offline else await self._info(spec)
            fmt = JSON_MODE if info is None else info["response_format"]
            request: dict[str, Any] = {"model": spec.model, "messages": self.messages, **spec.params}
            if fmt is not None:
                request["response_format"] = fmt
            key = request_hash(request)
            cached = self.a.cached_calls.get(key)
            if cached is None and info is not None and info["problem"]:
                # e.g. a resume in a shell without the key: litellm would say 500
                raise RunnerError("provider_error", info["problem"])
            if cached is not None:
                self.reused += 1
                self._log_call(request, key, turn, spec, 0, response=cached, cached=True)
                self.current, self.answered_by = index, spec.raw
                return str(cached.get("content") or ""), False
            for try_ in range(spec.retries + 1):
                self._check_budget_before()
                self._checkpoint()
                started = time.perf_counter()
                result = await self._call(request, key, turn, spec, try_)
                if isinstance(result, str):
                    self.current, self.answered_by = index, spec.raw
                    return result, self._over_budget()
                failures.append(result)
                wait = (self._backoff(spec, try_, result)
                        if result.retryable and try_ < spec.retries else None)
                self._log_call(request, key, turn, spec, try_, error=result, backoff=wait,
                               latency=time.perf_counter() - started)
                if not result.retryable:
                    raise RunnerError("provider_error", f"{spec.model}: {result.message}")
                if wait is not None:
                    self._checkpoint()  # the failure is on disk while we wait
                    await self._sleep(wait)
        last = failures[-1]
        timeouts = all(f.kind == "timeout" for f in failures)
        tried = ", ".join(s.model for s in specs[self.current:])
        raise RunnerError("timeout" if timeouts else "provider_error",
                          f"no model answered ({tried}); last error: {last.message}",
                          retryable=True)

    async def _info(self, spec: ModelSpec) -> dict[str, Any]:
        """What litellm says of an online model (JSON mode, a missing key): asked once per
        host. A host started after a death imports litellm first: waited for with beats. A
        host that ends before it answers is asked once more (a new one), then the attempt
        fails as a retryable provider error."""
        for _ in range(2):
            if not self.models.is_ready():
                await _ready(self.models, self.a)
            info = await self.models.info(spec.model, spec.api_base)
            if "failure" not in info:
                return info
        raise RunnerError("provider_error", f"{spec.model}: {info['failure']['message']}",
                          retryable=True)

    async def _call(self, request: dict[str, Any], key: str, turn: int, spec: ModelSpec,
                    try_: int) -> str | _Failure:
        """One request. Returns the reply's text (logged), or the failure (not yet logged)."""
        kwargs: dict[str, Any] = dict(request)
        kwargs["messages"] = [dict(m) for m in self.messages]  # litellm may edit what it is given
        kwargs["max_retries"] = 0  # retries are ours: the SDK's would be invisible and unlogged
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
        if spec.timeout_s is not None:
            kwargs["timeout"] = spec.timeout_s
        if spec.offline:
            kwargs["metadata"] = {"agentctl": {"task": self.a.task_id, "attempt": self.a.attempt,
                                               "turn": turn, "try": try_}}
        self.a.beat()
        started = time.perf_counter()
        reply = await self._beating(self.models.call(kwargs))
        latency = time.perf_counter() - started
        failure = reply.get("failure")
        if failure is not None:
            return _Failure(str(failure["kind"]), bool(failure["retryable"]),
                            str(failure["message"]), failure.get("retry_after"))
        content = str(reply["content"])
        usage = reply["usage"]
        tokens = int(usage["total_tokens"])
        cost, cost_known = float(reply["cost"]), bool(reply["cost_known"])
        response = {"content": content, "model": reply["model"],
                    "finish_reason": reply["finish_reason"], "usage": usage}
        call = {"request_hash": key, "response": response, "tokens": tokens,
                "cost_usd": cost, "model": spec.raw, "latency_s": round(latency, 4),
                "call": self.paid + 1, "turn": turn}
        if not cost_known:
            call["cost_known"] = False
        if self.a.record_call is not None:
            await self.a.record_call(call)  # durable before the reply is used
        self.paid += 1
        self.tokens += tokens
        self.cost += cost
        self._log_call(request, key, turn, spec, try_, response=response, latency=latency,
                       tokens=tokens, cost=cost)
        if self.pause and self.pause_at in (None, self.paid):
            await self._sleep(self.pause)
        return content

    # ------------------------------------------------------------------ budget

    def _over_budget(self) -> bool:
        a = self.a
        return ((a.budget_usd is not None and self.cost > a.budget_usd)
                or (a.budget_tokens is not None and self.tokens > a.budget_tokens))

    def _check_budget_before(self) -> None:
        a = self.a
        if ((a.budget_usd is not None and self.cost >= a.budget_usd)
                or (a.budget_tokens is not None and self.tokens >= a.budget_tokens)):
            raise RunnerError("budget", self._budget_text())

    def _budget_text(self) -> str:
        a = self.a
        parts = []
        if a.budget_usd is not None:
            parts.append(f"${self.cost:.6f} of ${a.budget_usd:.6f}")
        if a.budget_tokens is not None:
            parts.append(f"{self.tokens} of {a.budget_tokens} tokens")
        return "the attempt's budget is spent (" + ", ".join(parts) + ")"

    # ------------------------------------------------------------------ waiting

    def _backoff(self, spec: ModelSpec, try_: int, failure: _Failure) -> float:
        if failure.retry_after is not None:
            return float(min(BACKOFF_CAP_S, max(0.0, failure.retry_after)))
        step: float = min(BACKOFF_CAP_S, spec.backoff_s * 2.0 ** try_)
        return step * (0.5 + self.rng().random() / 2)  # jitter: 50-100% of the step

    def rng(self) -> random.Random:
        """The attempt's jitter, the same in any process (seeding from a string hashes it:
        not paid by attempts that never back off)."""
        if self._rng is None:
            a = self.a
            self._rng = random.Random(f"{a.run_id}/{a.task_id}/{a.attempt}")
        return self._rng

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.a.beat()
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, BEAT_EVERY_S))

    async def _beating(self, coro: Awaitable[T]) -> T:
        """Await ``coro``, beating while it runs (a slow model is not a dead task). A timer on
        the loop beats, rather than a wait that wakes every 0.25 s: most calls end before the
        first beat is due, and then the only cost is the timer's. The call runs in a task of
        its own: measured, that costs less CPU than awaiting it inline (50-100 us less per
        call of an offline model's ~1.6 ms; litellm runs each call's setup in the loop's
        thread pool, and the difference is in how that interleaves with the rest)."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(coro)
        beat = self.a.beat
        timer: list[asyncio.TimerHandle] = []

        def tick() -> None:
            timer[0] = loop.call_later(BEAT_EVERY_S, tick)  # first: a beat that raises beats on
            if not self.on_disk:
                # A call still out after a beat's time: the prompt as sent goes on disk now
                # (exchange.json, `running`), so a driver killed during a slow first call
                # leaves it behind; a call answered at once never pays for this write.
                self.save()
            beat()

        timer.append(loop.call_later(BEAT_EVERY_S, tick))
        try:
            return await task
        finally:
            timer[0].cancel()
            if not task.done():
                task.cancel()

    # ------------------------------------------------------------------ the exchange on disk

    def _log_call(self, request: dict[str, Any], key: str, turn: int, spec: ModelSpec,
                  try_: int, *, response: dict[str, Any] | None = None,
                  error: _Failure | None = None, cached: bool = False, latency: float = 0.0,
                  tokens: int = 0, cost: float = 0.0, backoff: float | None = None) -> None:
        # The conversation only grows, so a request is the first `sent_messages` messages
        # of exchange.json's `messages`, plus its `params`.
        entry: dict[str, Any] = {
            "n": len(self.entries) + 1, "turn": turn, "model": spec.raw, "try": try_,
            "sent_messages": len(request["messages"]),
            "params": {k: v for k, v in request.items() if k != "messages"},
            "request_hash": key, "cached": cached, "latency_s": round(latency, 4),
            "tokens": tokens, "cost_usd": cost, "response": response,
            "error": None if error is None else {"kind": error.kind, "retryable": error.retryable,
                                                 "message": error.message},
        }
        if error is not None:
            entry["backoff_s"] = None if backoff is None else round(backoff, 4)
        self.entries.append(entry)

    def _checkpoint(self) -> None:
        """Before another call (or a backoff before one): ``exchange.json`` as it stands, if
        a request was made since it was last written, so that a driver killed during what
        follows leaves the calls made so far behind. The first call writes nothing unless
        it is still out after ``BEAT_EVERY_S`` (see ``_beating``): an attempt that makes one
        quick call writes one file, once."""
        if len(self.entries) > self.saved:
            self.save()

    def save(self) -> None:
        """``exchange.json`` in the attempt's directory: the whole conversation and every
        request made for it. Written when the attempt ends, however it ends (a timeout
        cancels it: still written), and by ``_checkpoint`` meanwhile, with ``outcome``
        ``running``; for people -- the WAL holds what recovery needs (every paid response)."""
        self.saved = len(self.entries)
        self.on_disk = True
        data = {
            "task": self.a.task_id, "attempt": self.a.attempt, "models": self.a.models,
            "outcome": self.ending, "answered_by": self.answered_by, "turns": self.turns,
            "paid_calls": self.paid, "reused_calls": self.reused, "tokens": self.tokens,
            "cost_usd": self.cost, "problems": self.problems, "messages": self.messages,
            "calls": self.entries,
        }
        self._write("exchange.json", data)

    def _write(self, name: str, obj: dict[str, Any]) -> None:
        # One line of JSON: the C encoder is many times faster than indent=2's pure Python
        # one, and this is written for every attempt (`jq . exchange.json` to read it).
        with contextlib.suppress(OSError):
            write_atomic(self.a.file(name), _masked_json(obj).encode(), durable=False)

    def details(self) -> dict[str, Any]:
        return {"model": self.answered_by, "turns": self.turns, "calls": self.paid,
                "reused_calls": self.reused}


# --------------------------------------------------------------------------- helpers


def _masked_json(obj: Any) -> str:
    """``obj`` as one line of JSON, secrets masked (``Redactor.encoded``: on the encoded
    text, in one pass, rather than a regex run on every string of it)."""
    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    return redact.default().encoded(dumps(obj), obj, dumps)[0] + "\n"


def _user_message(attempt: Attempt) -> str:
    """The user message: the scheduler already rendered it into ``attempt.prompt`` (skill
    body, a rule, then this); take it from there when it is that, else render it."""
    skill = attempt.skill
    prefix = skill.body.strip() + "\n\n---\n\n" if skill else ""
    if attempt.prompt is not None and attempt.prompt.startswith(prefix):
        return attempt.prompt[len(prefix):]
    return prompts.user_message(attempt.packet, skill)


def _parse_reply(text: str) -> tuple[Any, list[str]]:
    """The JSON object in a reply: the whole text, a fenced block, or the outermost braces."""
    s = text.strip()
    try:
        return json.loads(s), []
    except ValueError as e:
        first = e
    fenced = re.search(r"```(?:json)?\s*\n(.*?)\n?```", s, re.S)
    candidates = [fenced.group(1)] if fenced else []
    i, j = s.find("{"), s.rfind("}")
    if 0 <= i < j:
        candidates.append(s[i:j + 1])
    for c in candidates:
        try:
            return json.loads(c), []
        except ValueError:
            continue
    return None, [f"the reply is not valid JSON ({first})"]


def _repair_text(problems: list[str]) -> str:
    lines = "\n".join(f"- {p}" for p in problems[:20])
    return ("Your reply is not a valid report:\n\n" + lines + "\n\nReply again with one JSON "
            "object, and nothing else, that validates against the schema given above.")
