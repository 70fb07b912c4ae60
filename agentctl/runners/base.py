"""What a runner is, and how runners are found.

A runner executes one attempt of one task and returns an Outcome; it never touches the WAL
or decides retries. Runners are registered by name in the entry-point group
``agentctl.runners`` (the built-ins too, in agentctl's own pyproject), loaded lazily so that a
run with no llm task never imports litellm.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol

from agentctl.models import Skill, StepSpec
from agentctl.store import attempt_name


@dataclass
class Attempt:
    """Everything a runner needs for one attempt. Paths are inside the run directory."""

    run_id: str
    task_id: str
    attempt: int
    idempotency_key: str
    spec: StepSpec  # a task's, or a fan-out template's, or a loop's maker/checker
    skill: Skill | None
    model: str | None
    models: list[str]  # the model and its fallbacks, in order
    workspace: Path
    workdir: Path
    task_dir: Path  # tasks/<id>: input.json, output.json, and each attempt's files (``file``)
    input_path: Path
    output_path: Path
    prompt_path: Path | None
    heartbeat_path: Path
    packet: dict[str, Any]
    prompt: str | None
    argv: list[str] | None
    env: dict[str, str]
    # Signals life (the driver judges staleness on its own clock from these calls).
    beat: Callable[[], None]
    # Durably logs a model call (WAL record, fsync'd) before its response is used.
    record_call: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    # Responses already paid for by an earlier attempt of this task: request hash -> response.
    cached_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Budget left for this attempt (None = unlimited).
    budget_usd: float | None = None
    budget_tokens: int | None = None

    def file(self, name: str) -> Path:
        """Where this attempt keeps a file of its own: ``tasks/<id>/attempt-<n>.<name>``."""
        return self.task_dir / attempt_name(self.attempt, name)


@dataclass
class Outcome:
    """How an attempt ended. ``report`` is the raw report, validated by the scheduler
    unless ``validated``: the runner already passed it through ``validate_report`` against
    the task's skill's output schema, and this is what that returned."""

    report: dict[str, Any] | None = None
    validated: bool = False
    category: str | None = None  # set when the attempt failed without a report
    message: str | None = None
    retryable: bool = False
    tokens: int = 0  # usage not already logged through record_call
    cost_usd: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    async def run(self, attempt: Attempt) -> Outcome: ...


class Registry:
    """Runner name -> factory, from the ``agentctl.runners`` entry points and any passed in."""

    BUILTIN: ClassVar[dict[str, str]] = {
        "command": "agentctl.runners.command:CommandRunner",
        "llm": "agentctl.runners.llm:LLMRunner",
        "noop": "agentctl.runners.noop:NoopRunner",
    }

    def __init__(self, extra: dict[str, Callable[[], Runner]] | None = None) -> None:
        self._factories: dict[str, Callable[[], Runner]] = dict(extra or {})
        self._instances: dict[str, Runner] = {}
        self._targets: dict[str, str] | None = None

    def _discover(self) -> dict[str, str]:
        if self._targets is None:
            targets = dict(self.BUILTIN)
            for ep in entry_points(group="agentctl.runners"):
                targets.setdefault(ep.name, ep.value)
            self._targets = targets
        return self._targets

    def names(self) -> list[str]:
        return sorted(set(self._discover()) | set(self._factories))

    def get(self, name: str) -> Runner:
        if name not in self._instances:
            factory = self._factories.get(name)
            if factory is None:
                target = self._discover().get(name)
                if target is None:
                    raise KeyError(name)
                module, _, attr = target.partition(":")
                factory = getattr(import_module(module), attr)
            self._instances[name] = factory()
        return self._instances[name]

    async def aclose(self) -> None:
        """At the end of a drive, while its event loop still runs: runners that keep
        per-loop resources (the llm runner's HTTP clients) release them. Opt in with
        ``async def aclose(self)``."""
        for runner in list(self._instances.values()):
            close = getattr(runner, "aclose", None)
            if close is not None:
                await close()
