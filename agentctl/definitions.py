"""Pipeline files (YAML) and the skills they name -> models, with file:line:col errors.

``load_pipeline`` collects every error it can find before raising one DefinitionError, so a
user fixes a file in one pass. Structure is checked per task, so one bad task does not hide
the cycle or the unknown skill in another.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agentctl import expr, yamlsafe
from agentctl.errors import DefinitionError, Diagnostic
from agentctl.models import (
    Budget,
    Defaults,
    Effects,
    InputSpec,
    Limits,
    Pipeline,
    Skill,
    TaskSpec,
)
from agentctl.skills import SkillRefused, load_output_schema, load_skill

TASK_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
# What `tasks.<id>.` may be followed by in an expression.
TASK_FIELDS = ("output", "summary", "status", "deliverables", "blockers", "next")


@dataclass
class Definition:
    """A loaded pipeline and everything it uses."""

    pipeline: Pipeline
    path: Path
    skills: dict[str, Skill]
    skills_dir: Path | None
    warnings: list[Diagnostic] = field(default_factory=list)
    sha256: str = ""

    def task(self, task_id: str) -> TaskSpec:
        return self.pipeline.tasks[task_id]

    def runner_of(self, task_id: str) -> str:
        t = self.pipeline.tasks[task_id]
        if t.runner:
            return t.runner
        return "command" if t.command else "llm"

    def effects_of(self, task_id: str) -> Effects:
        t = self.pipeline.tasks[task_id]
        if t.effects:
            return t.effects
        if self.pipeline.defaults.effects:
            return self.pipeline.defaults.effects
        return Effects.MUTATING if self.runner_of(task_id) == "command" else Effects.READ_ONLY

    def needs_approval(self, task_id: str) -> bool:
        t = self.pipeline.tasks[task_id]
        return t.approval == "required" or self.effects_of(task_id) is Effects.IRREVERSIBLE

    def timeout_of(self, task_id: str) -> float:
        t = self.pipeline.tasks[task_id]
        return t.timeout if t.timeout is not None else self.pipeline.defaults.timeout

    def retries_of(self, task_id: str) -> int:
        t = self.pipeline.tasks[task_id]
        return t.retries if t.retries is not None else self.pipeline.defaults.retries

    def heartbeat_of(self, task_id: str) -> float | None:
        t = self.pipeline.tasks[task_id]
        return t.heartbeat if t.heartbeat is not None else self.pipeline.defaults.heartbeat

    def model_of(self, task_id: str, override: str | None = None) -> str | None:
        t = self.pipeline.tasks[task_id]
        if t.model:
            return t.model
        if override:
            return override
        if self.pipeline.defaults.model:
            return self.pipeline.defaults.model
        skill = self.skills.get(t.skill) if t.skill else None
        return skill.suggested_model if skill else None


class _Collector:
    def __init__(self, path: Path, located: yamlsafe.Located | None) -> None:
        self.path = path
        self.located = located
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def _pos(self, loc: tuple[str | int, ...], key: bool) -> tuple[int | None, int | None]:
        if self.located is None:
            return None, None
        p = self.located.where_key(loc) if key else self.located.where(loc)
        return p if p else (None, None)

    def error(self, loc: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        line, col = self._pos(loc, key)
        self.errors.append(Diagnostic(str(self.path), line, col, message))

    def warn(self, loc: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        line, col = self._pos(loc, key)
        self.warnings.append(Diagnostic(str(self.path), line, col, message, "warning"))


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _report_pydantic(c: _Collector, err: ValidationError, prefix: tuple[str | int, ...],
                     model: type[BaseModel]) -> None:
    nested: dict[str, type[BaseModel]] = {
        "defaults": Defaults, "limits": Limits, "budget": Budget, "inputs": InputSpec,
    }
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            owner: type[BaseModel] = model
            for part in e["loc"][:-1]:
                owner = nested.get(str(part), owner)
            c.error(loc, f"{_dotted(loc)}: unknown field '{key}'{did_you_mean(key, _fields(owner))}",
                    key=True)
            continue
        msg = e["msg"]
        msg = msg.removeprefix("Value error, ")
        if e["type"] == "missing":
            c.error(loc[:-1], f"{_dotted(loc)}: required field is missing")
        else:
            c.error(loc, f"{_dotted(loc)}: {msg}")


def find_skills_dir(pipeline_path: Path, declared: str | None) -> Path | None:
    base = pipeline_path.parent
    if declared:
        return (base / declared).resolve()
    for cand in (base / "skills", base.parent / "skills"):
        if cand.is_dir():
            return cand.resolve()
    return None


def find_skill_file(skills_dir: Path | None, name: str) -> Path | None:
    if skills_dir is None:
        return None
    for cand in (skills_dir / name / "SKILL.md", skills_dir / f"{name}.md"):
        if cand.is_file():
            return cand
    return None


def load_pipeline(path: str | Path, *, skills_dir: Path | None = None) -> Definition:
    """Load and check a pipeline and its skills. Raises DefinitionError with every error."""
    path = Path(path)
    c = _Collector(path, None)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DefinitionError([Diagnostic(str(path), None, None, "no such file")]) from None
    except IsADirectoryError:
        raise DefinitionError([Diagnostic(str(path), None, None, "is a directory, not a pipeline file")]) from None
    except OSError as e:
        raise DefinitionError([Diagnostic(str(path), None, None, f"cannot read: {e.strerror}")]) from None
    try:
        located = yamlsafe.load(raw)
    except yamlsafe.YamlError as e:
        raise DefinitionError([Diagnostic(str(path), e.line, e.col, e.message)]) from None
    c.located = located
    data = located.data
    if not isinstance(data, dict):
        c.error((), "a pipeline file must be a YAML mapping with 'name' and 'tasks'")
        raise DefinitionError(c.errors)

    # Top level, with tasks checked one by one below.
    raw_tasks = data.get("tasks")
    top = {**data, "tasks": {}}
    pipeline: Pipeline | None = None
    try:
        pipeline = Pipeline.model_validate(top)
    except ValidationError as e:
        _report_pydantic(c, e, (), Pipeline)
    if "tasks" not in data:
        c.error((), "the pipeline has no 'tasks'")
        raw_tasks = {}
    elif not isinstance(raw_tasks, dict):
        c.error(("tasks",), "tasks must be a mapping of task id to task (like GitHub Actions jobs)")
        raw_tasks = {}
    elif not raw_tasks:
        c.error(("tasks",), "the pipeline has no tasks")

    tasks: dict[str, TaskSpec] = {}
    raw_needs: dict[str, list[str]] = {}
    for tid, tdata in raw_tasks.items():
        loc: tuple[str | int, ...] = ("tasks", tid)
        _check_task_id(c, tid)
        if not isinstance(tdata, dict):
            c.error(loc, f"tasks.{tid}: a task must be a mapping (with 'command' or 'skill')")
            continue
        needs = tdata.get("needs", [])
        raw_needs[tid] = [needs] if isinstance(needs, str) else [n for n in needs if isinstance(n, str)] if isinstance(needs, list) else []
        try:
            spec = TaskSpec.model_validate(tdata)
        except ValidationError as e:
            _report_pydantic(c, e, loc, TaskSpec)
            continue
        if not spec.command and not spec.skill and not spec.runner:
            c.error(loc, f"tasks.{tid}: a task needs a 'command' or a 'skill'", key=True)
        tasks[tid] = spec

    all_ids = list(raw_tasks) if isinstance(raw_tasks, dict) else []
    for tid, needs in raw_needs.items():
        seen: set[str] = set()
        for i, need in enumerate(needs):
            nloc = ("tasks", tid, "needs", i) if isinstance(raw_tasks[tid].get("needs"), list) else ("tasks", tid, "needs")
            if need == tid:
                c.error(nloc, f"tasks.{tid}.needs: a task cannot need itself")
            elif need not in raw_tasks:
                c.error(nloc, f"tasks.{tid}.needs: unknown task '{need}'{did_you_mean(need, all_ids)}")
            if need in seen:
                c.warn(nloc, f"tasks.{tid}.needs: '{need}' is listed twice")
            seen.add(need)

    from agentctl.planning import find_cycle  # noqa: PLC0415 - avoids an import cycle

    cycle = find_cycle({t: [n for n in ns if n in raw_tasks and n != t] for t, ns in raw_needs.items()})
    if cycle:
        c.error(("tasks", cycle[0], "needs"), "tasks form a cycle: " + " -> ".join(cycle))

    # Skills.
    declared_dir = data.get("skills") if isinstance(data.get("skills"), str) else None
    sdir = skills_dir or find_skills_dir(path, declared_dir)
    skills: dict[str, Skill] = {}
    for tid, spec in tasks.items():
        if not spec.skill or spec.skill in skills:
            continue
        sfile = find_skill_file(sdir, spec.skill)
        if sfile is None:
            where = f"{sdir}/{spec.skill}/SKILL.md or {sdir}/{spec.skill}.md" if sdir else "no skills/ directory was found beside the pipeline or in its parent"
            c.error(("tasks", tid, "skill"), f"tasks.{tid}.skill: skill '{spec.skill}' not found ({where})")
            continue
        try:
            skill = load_skill(sfile, expected_name=spec.skill)
            load_output_schema(skill)
        except SkillRefused as e:
            c.errors.append(Diagnostic(str(sfile), e.line, None, e.reason))
            continue
        for w in skill.warnings:
            c.warnings.append(Diagnostic(str(sfile), None, None, w, "warning"))
        skills[spec.skill] = skill

    # Expressions.
    inputs = set(data.get("inputs") or {}) if isinstance(data.get("inputs"), dict) else set()
    for tid, spec in tasks.items():
        needs_set = set(spec.needs)
        for loc, value in _expression_sites(tid, spec):
            for src in expr.template_exprs(value):
                _check_expression(c, loc, src, inputs, needs_set, set(tasks))
        if spec.model and pipeline is not None and spec.model in pipeline.models:
            pass  # a named tier
    if pipeline is not None:
        for tier, models in pipeline.models.items():
            if not models:
                c.error(("models", tier), f"models.{tier}: a tier needs at least one model")

    if c.errors:
        raise DefinitionError(c.errors + c.warnings)
    assert pipeline is not None
    pipeline = pipeline.model_copy(update={"tasks": tasks})
    return Definition(
        pipeline=pipeline, path=path, skills=skills, skills_dir=sdir, warnings=c.warnings,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _check_task_id(c: _Collector, tid: Any) -> None:
    loc = ("tasks", tid)
    if not isinstance(tid, str):
        c.error(loc, f"task id {tid!r} must be a string", key=True)
    elif "/" in tid or "\\" in tid:
        c.error(loc, f"task id '{tid}' contains a path separator; task ids name directories", key=True)
    elif ".." in tid:
        c.error(loc, f"task id '{tid}' contains '..'; task ids name directories", key=True)
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in tid):
        c.error(loc, f"task id {tid!r} contains a control character", key=True)
    elif len(tid) > 64:
        c.error(loc, f"task id '{tid[:20]}...' is {len(tid)} characters; at most 64", key=True)
    elif not TASK_ID_RE.fullmatch(tid):
        c.error(loc, f"task id '{tid}' must be letters, digits, '_' and '-' (safe as a file name)",
                key=True)


def _expression_sites(tid: str, spec: TaskSpec) -> list[tuple[tuple[str | int, ...], str]]:
    sites: list[tuple[tuple[str | int, ...], str]] = []

    def walk(loc: tuple[str | int, ...], v: Any) -> None:
        if isinstance(v, str):
            if "${{" in v:
                sites.append((loc, v))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk((*loc, i), x)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk((*loc, k), x)

    walk(("tasks", tid, "with"), spec.with_)
    for i, arg in enumerate(spec.command or []):
        walk(("tasks", tid, "command", i), arg)
    for k, v in spec.env.items():
        walk(("tasks", tid, "env", k), v)
    return sites


def _check_expression(c: _Collector, loc: tuple[str | int, ...], src: str, inputs: set[str],
                      needs: set[str], task_ids: set[str]) -> None:
    where = _dotted(loc)
    try:
        node = expr.parse(src)
    except expr.ExprError as e:
        c.error(loc, f"{where}: bad expression '${{{{{src}}}}}': {e}")
        return
    for p in expr.paths(node):
        root = p.parts[0]
        if root == "inputs":
            if len(p.parts) < 2:
                c.error(loc, f"{where}: '{p.dotted()}' must name an input, e.g. inputs.path")
            elif p.parts[1] not in inputs:
                name = str(p.parts[1])
                c.error(loc, f"{where}: unknown input '{name}'{did_you_mean(name, sorted(inputs))}")
        elif root == "tasks":
            if len(p.parts) < 3:
                c.error(loc, f"{where}: '{p.dotted()}' must name a task's field, e.g. tasks.plan.output")
                continue
            ref = str(p.parts[1])
            if ref not in task_ids:
                c.error(loc, f"{where}: unknown task '{ref}'{did_you_mean(ref, sorted(task_ids))}")
            elif ref not in needs:
                c.error(loc, f"{where}: '{p.dotted()}' refers to task '{ref}', which is not in this task's needs")
            elif p.parts[2] not in TASK_FIELDS:
                f = str(p.parts[2])
                c.error(loc, f"{where}: tasks.{ref} has no field '{f}'{did_you_mean(f, TASK_FIELDS)} "
                        f"(use one of: {', '.join(TASK_FIELDS)})")
        else:
            c.error(loc, f"{where}: unknown name '{root}' in expression (use inputs.<name> or "
                    "tasks.<id>.output)")
