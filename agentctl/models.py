"""Pydantic models of pipelines, skills and reports, and the status vocabularies. No I/O."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from agentctl.vocab import CATEGORIES, SETTLED, Effects, RunStatus, TaskStatus  # noqa: F401

# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: Any) -> float:
    """'30s', '5m', '1h30m', '250ms' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r} (use e.g. 30s, 5m, 1h)")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        s = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * scale[m.group(2)]
            pos = m.end()
        if s and pos == len(s):
            return total
    raise ValueError(f"bad duration {value!r} (use e.g. 30s, 5m, 1h)")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("must be more than zero (e.g. 30s, 5m)")
    return value


# A timeout or a heartbeat of zero would fail every attempt at once, or switch staleness off.
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# --------------------------------------------------------------------------- pipeline


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Budget(_Strict):
    usd: float | None = Field(default=None, ge=0)
    tokens: int | None = Field(default=None, ge=0)


class Limits(_Strict):
    concurrency: int = Field(default=4, ge=1, le=1024)
    budget: Budget = Field(default_factory=Budget)
    fanout: int = Field(default=256, ge=1)


class InputSpec(_Strict):
    default: Any = None
    description: str | None = None
    required: bool | None = None  # unset: required exactly when there is no default


class Defaults(_Strict):
    model: str | None = None
    timeout: PositiveDuration = 300.0
    retries: int = Field(default=2, ge=0, le=100)
    heartbeat: PositiveDuration | None = None
    effects: Effects | None = None
    env: dict[str, str] = Field(default_factory=dict)
    backoff: Duration = 1.0  # first retry delay; doubles per retry, with jitter


class StepSpec(_Strict):
    """What runs: a command or a skill (or a named runner), and how."""

    skill: str | None = None
    command: list[str] | None = None
    runner: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    model: str | None = None
    effects: Effects | None = None
    timeout: PositiveDuration | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    heartbeat: PositiveDuration | None = None
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(
                "command must be a list of arguments, e.g. [python3, script.py]; no shell is used"
            )
        if isinstance(v, list):
            if not v:
                raise ValueError("command must not be empty")
            out = []
            for a in v:
                if isinstance(a, bool) or a is None:
                    word = {True: "true", False: "false", None: "null"}[a]
                    raise ValueError(f"command arguments must be strings; YAML read {word} as "
                                     f"{a!r}: quote it, e.g. \"{word}\"")
                if isinstance(a, dict | list):
                    raise ValueError(f"command arguments must be strings, not {a!r}")
                out.append(str(a))
            return out
        return v


class LoopSpec(_Strict):
    """A review loop: the maker makes, the checker checks, until the checker says pass."""

    maker: StepSpec
    checker: StepSpec
    until: str = "${{ checker.output.verdict == 'pass' }}"
    max_iterations: int = Field(default=3, ge=1, le=100)
    budget: Budget | None = None


class TaskSpec(StepSpec):
    needs: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list)
    approval: Literal["required", "none"] | None = None
    budget: Budget | None = None
    description: str | None = None
    foreach: str | None = None
    key: str | None = None  # names fan-out instances: ${{ item.id }}
    when: str | None = None
    loop: LoopSpec | None = None


class Pipeline(_Strict):
    name: str
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    limits: Limits = Field(default_factory=Limits)
    models: dict[str, Annotated[list[str], BeforeValidator(_as_list)]] = Field(default_factory=dict)
    skills: str | None = None
    tasks: dict[str, TaskSpec]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", v) or len(v) > 64:
            raise ValueError(
                f"pipeline name {v!r} must be lowercase letters, digits and '-', "
                "starting with a letter or digit, at most 64 characters"
            )
        return v

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        # `path: "."` is shorthand for `path: {default: "."}`.
        if isinstance(v, dict):
            return {k: (x if isinstance(x, dict) else {"default": x}) for k, x in v.items()}
        return v


# --------------------------------------------------------------------------- skills


class Skill(BaseModel):
    """A loaded skill. ``warnings`` lists where the file bends the Agent Skills rules."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    description: str
    body: str
    path: Path
    metadata: dict[str, Any] = Field(default_factory=dict)
    license: str | None = None
    compatibility: str | None = None
    allowed_tools: list[str] = Field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    output_schema_path: Path | None = None
    warnings: list[str] = Field(default_factory=list)
    sha256: str = ""

    @property
    def suggested_model(self) -> str | None:
        m = self.metadata.get("agentctl.model")
        return str(m) if m else None


# --------------------------------------------------------------------------- reports


class Report(_Strict):
    status: Literal["COMPLETE", "BLOCKED", "FAILED"]
    summary: str
    deliverables: list[str] = Field(default_factory=list)
    blockers: list[str] = Field(default_factory=list)
    next: Any = None
    output: Any = None


REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "summary"],
    "additionalProperties": False,
    "properties": {
        "status": {"enum": ["COMPLETE", "BLOCKED", "FAILED"]},
        "summary": {"type": "string"},
        "deliverables": {"type": "array", "items": {"type": "string"}},
        "blockers": {"type": "array", "items": {"type": "string"}},
        "next": {},
        "output": {},
    },
}


def report_schema(output_schema: dict[str, Any] | None) -> dict[str, Any]:
    """The report contract, with the skill's output schema inside when it has one."""
    schema = {**REPORT_SCHEMA, "properties": dict(REPORT_SCHEMA["properties"])}
    if output_schema is not None:
        schema["properties"]["output"] = output_schema
        schema["required"] = ["status", "summary", "output"]
    return schema
