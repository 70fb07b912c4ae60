"""Pipeline files (YAML) and the skills they name -> models, with file:line:col errors.

``load_pipeline`` collects every error it can find before raising one DefinitionError, so a
user fixes a file in one pass. Structure is checked per task, so one bad task does not hide
the cycle or the unknown skill in another.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from agentctl import expr, yamlsafe
from agentctl.errors import DefinitionError, Diagnostic
from agentctl.models import (
    Pipeline,
    Skill,
    StepSpec,
    TaskSpec,
    report_schema,
)
from agentctl.planning import find_cycles
from agentctl.skills import SkillRefused, load_output_schema, load_skill
from agentctl.vocab import Effects

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

    def step(self, task_id: str, role: str | None = None) -> StepSpec:
        """What runs for a task, or for the maker or checker of its review loop."""
        t = self.pipeline.tasks[task_id]
        if role in ("maker", "checker") and t.loop is not None:
            return t.loop.maker if role == "maker" else t.loop.checker
        return t

    # Settings of a step, with the pipeline's defaults filled in.
    def runner_for(self, s: StepSpec) -> str:
        if s.runner:
            return s.runner
        if isinstance(s, TaskSpec) and s.loop is not None:
            return "loop"
        return "command" if s.command else "llm"

    def effects_for(self, s: StepSpec) -> Effects:
        if s.effects:
            return s.effects
        if self.pipeline.defaults.effects:
            return self.pipeline.defaults.effects
        return Effects.MUTATING if self.runner_for(s) == "command" else Effects.READ_ONLY

    def timeout_for(self, s: StepSpec) -> float:
        return s.timeout if s.timeout is not None else self.pipeline.defaults.timeout

    def retries_for(self, s: StepSpec) -> int:
        return s.retries if s.retries is not None else self.pipeline.defaults.retries

    def heartbeat_for(self, s: StepSpec) -> float | None:
        return s.heartbeat if s.heartbeat is not None else self.pipeline.defaults.heartbeat

    def model_for(self, s: StepSpec, override: str | None = None) -> str | None:
        if s.model:
            return s.model
        if override:
            return override
        if self.pipeline.defaults.model:
            return self.pipeline.defaults.model
        skill = self.skills.get(s.skill) if s.skill else None
        return skill.suggested_model if skill else None

    def runner_of(self, task_id: str) -> str:
        return self.runner_for(self.pipeline.tasks[task_id])

    def effects_of(self, task_id: str) -> Effects:
        return self.effects_for(self.pipeline.tasks[task_id])

    def needs_approval(self, task_id: str) -> bool:
        t = self.pipeline.tasks[task_id]
        return t.approval == "required" or self.effects_of(task_id) is Effects.IRREVERSIBLE

    def timeout_of(self, task_id: str) -> float:
        return self.timeout_for(self.pipeline.tasks[task_id])

    def retries_of(self, task_id: str) -> int:
        return self.retries_for(self.pipeline.tasks[task_id])

    def heartbeat_of(self, task_id: str) -> float | None:
        return self.heartbeat_for(self.pipeline.tasks[task_id])

    def model_of(self, task_id: str, override: str | None = None) -> str | None:
        return self.model_for(self.pipeline.tasks[task_id], override)

    def steps(self) -> list[tuple[str, str | None, StepSpec]]:
        """Every (task, role, step) that runs something: tasks, and loops' makers/checkers."""
        out: list[tuple[str, str | None, StepSpec]] = []
        for tid, t in self.pipeline.tasks.items():
            if t.loop is not None:
                out += [(tid, "maker", t.loop.maker), (tid, "checker", t.loop.checker)]
            else:
                out.append((tid, None, t))
        return out


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
        return p if p else (1, 1)  # an empty document: the start of the file

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


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "a mapping", "list_type": "a list",
}


def _submodel(owner: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The model of field ``name`` of ``owner`` (through ``X | None`` and ``dict[str, X]``)."""
    for fname, f in owner.model_fields.items():
        if name in (fname, f.alias):
            todo: list[Any] = [f.annotation]
            while todo:
                t = todo.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    return t
                todo += get_args(t)
    return None


def _report_pydantic(c: _Collector, err: ValidationError, prefix: tuple[str | int, ...],
                     model: type[BaseModel]) -> None:
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        where = _dotted(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            owner: type[BaseModel] = model
            for part in e["loc"][:-1]:
                owner = _submodel(owner, str(part)) or owner
            c.error(loc, f"{where}: unknown field '{key}'{did_you_mean(key, _fields(owner))}",
                    key=True)
        elif kind == "missing":
            c.error(loc[:-1], f"{where}: required field is missing")
        elif kind in _EXPECTED:
            c.error(loc, f"{where}: expected {_EXPECTED[kind]}, got {_describe(e.get('input'))}")
        elif kind == "enum" and loc[-1] == "effects":
            value = str(e.get("input"))
            options = [x.value for x in Effects]
            c.error(loc, f"{where}: unknown effects '{value}'{did_you_mean(value, options)} "
                    f"(one of: {', '.join(options)})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if msg.startswith("Input should"):
                msg = msg.replace("Input should", "should", 1) + f", got {_describe(e.get('input'))}"
            c.error(loc, f"{where}: {msg}")


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
    raw_needs: dict[str, Any] = {}  # each task's `needs` as written
    folded: dict[str, str] = {}
    for tid, tdata in raw_tasks.items():
        loc: tuple[str | int, ...] = ("tasks", tid)
        _check_task_id(c, tid, folded)
        if not isinstance(tdata, dict):
            c.error(loc, f"tasks.{tid}: a task must be a mapping (with 'command' or 'skill')")
            continue
        raw_needs[tid] = tdata.get("needs")
        try:
            spec = TaskSpec.model_validate(tdata)
        except ValidationError as e:
            _report_pydantic(c, e, loc, TaskSpec)
            # Check the rest of the task too (its skill, its expressions): all errors at once.
            bad = {err["loc"][0] for err in e.errors() if err["loc"]}
            try:
                spec = TaskSpec.model_validate({k: v for k, v in tdata.items() if k not in bad})
            except ValidationError:
                continue
            tasks[tid] = spec
            continue
        if spec.loop is not None:
            if spec.command or spec.skill or spec.runner:
                c.error(loc, f"tasks.{tid}: a task with a 'loop' runs its maker and checker; "
                        "it cannot also have 'command', 'skill' or 'runner'", key=True)
            for role in ("maker", "checker"):
                step = getattr(spec.loop, role)
                if not step.command and not step.skill and not step.runner:
                    c.error((*loc, "loop", role), f"tasks.{tid}.loop.{role}: needs a 'command' "
                            "(an argv list) or a 'skill'")
            if spec.foreach:
                c.error((*loc, "foreach"), f"tasks.{tid}: 'foreach' and 'loop' cannot be combined")
        elif not (spec.command or spec.skill or spec.runner):
            c.error(loc, f"tasks.{tid}: a task needs a 'command' (an argv list) or a 'skill'",
                    key=True)
        # fullmatch alone would accept "${{ a }} and ${{ b }}" (the lazy group stretches to
        # the last "}}"), which renders to a string: require exactly one expression.
        if spec.foreach is not None and (not expr.TEMPLATE.fullmatch(spec.foreach.strip())
                                         or len(expr.template_exprs(spec.foreach)) != 1):
            c.error((*loc, "foreach"), f"tasks.{tid}.foreach: must be one ${{{{ }}}} expression "
                    "naming a list, e.g. ${{ tasks.plan.output.subtasks }}")
        # A condition with text around its ${{ }} (or two of them) would render to a string,
        # and any non-empty string is true: the task would always run.
        conds = [((*loc, "when"), spec.when)]
        if spec.loop is not None:
            conds.append(((*loc, "loop", "until"), spec.loop.until))
        for cloc, cond in conds:
            if cond is not None and "${{" in cond and (
                    not expr.TEMPLATE.fullmatch(cond.strip()) or len(expr.template_exprs(cond)) != 1):
                c.error(cloc, f"{_dotted(cloc)}: must be one condition, with or without one "
                        "${{ }} around all of it, e.g. inputs.mode == 'full' && "
                        "tasks.plan.status == 'COMPLETE'")
        if spec.key is not None and not spec.foreach:
            c.error((*loc, "key"), f"tasks.{tid}.key: names fan-out instances; it needs 'foreach'")
        tasks[tid] = spec

    # Needs: names and patterns -> the tasks each task needs, checked; then cycles.
    graph = _resolve_needs(c, list(raw_tasks), raw_needs)
    for tid, spec in tasks.items():
        if spec.needs != graph.get(tid, spec.needs):
            tasks[tid] = spec.model_copy(update={"needs": graph[tid]})
    for cycle in find_cycles(graph):
        c.error(("tasks", cycle[0], "needs"), f"tasks.{cycle[0]}.needs: tasks form a cycle: "
                + " -> ".join(cycle) + _through_patterns(cycle, raw_needs))

    skills, sdir = _load_skills(c, path, data, tasks, skills_dir)

    # Expressions.
    inputs = set(data.get("inputs") or {}) if isinstance(data.get("inputs"), dict) else set()
    ids = set(raw_tasks)
    schemas = {tid: skills[t.skill].output_schema for tid, t in tasks.items()
               if t.skill in skills and skills[t.skill].output_schema}
    for tid, t in tasks.items():
        maker = t.loop.maker.skill if t.loop is not None else None
        if maker in skills and skills[maker].output_schema:
            schemas[tid] = skills[maker].output_schema  # a loop reports its last maker's report
    for tid in schemas:
        if tasks[tid].foreach:  # a fan-out's output: its instances' reports, in order
            schemas[tid] = {"type": "array", "items": report_schema(schemas[tid])}
    for tid, spec in tasks.items():
        needs_set = set(spec.needs)
        for loc, value, extra in _expression_sites(tid, spec):
            if expr.unclosed(value):
                c.error(loc, f"{_dotted(loc)}: '${{{{' without a closing '}}}}'")
            for src in expr.template_exprs(value):
                _check_expression(c, loc, src, inputs, needs_set, ids, schemas, extra)
    if pipeline is not None:
        for k, v in pipeline.defaults.env.items():
            loc = ("defaults", "env", k)
            for src in expr.template_exprs(v):
                _check_expression(c, loc, src, inputs, set(), ids, schemas)
        for tier, models in pipeline.models.items():
            if not models:
                c.error(("models", tier), f"models.{tier}: a tier needs at least one model")
    _check_no_expressions(c, data)

    if c.errors:
        raise DefinitionError(_sorted(path, c.errors + c.warnings))
    assert pipeline is not None
    pipeline = pipeline.model_copy(update={"tasks": tasks})
    return Definition(
        pipeline=pipeline, path=path, skills=skills, skills_dir=sdir,
        warnings=_sorted(path, c.warnings), sha256=hashlib.sha256(raw).hexdigest(),
    )


def _sorted(path: Path, diags: list[Diagnostic]) -> list[Diagnostic]:
    """The pipeline's own diagnostics first, by line; then each skill file's, by line."""
    return sorted(diags, key=lambda d: (d.path != str(path), d.path, d.line or 0, d.col or 0))


GLOB_CHARS = re.compile(r"[*?[]")


def _entries(tid: str, needs: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Each need with where it was written; wrong types are left to the model's check."""
    if isinstance(needs, str):
        return [(("tasks", tid, "needs"), needs)]
    if isinstance(needs, list):
        return [(("tasks", tid, "needs", i), n) for i, n in enumerate(needs) if isinstance(n, str)]
    return []


def _plain_names(needs: Any) -> list[str] | None:
    """``needs`` as a list of plain names (no glob characters), or None."""
    names = [needs] if isinstance(needs, str) else needs
    if not isinstance(names, list):
        return None
    try:
        joined = "\0".join(names)  # in C: a TypeError if any entry is not a string
    except TypeError:
        return None
    return None if GLOB_CHARS.search(joined) else names


def _resolve_needs(c: _Collector, ids: list[str], raw_needs: dict[str, Any]) -> dict[str, list[str]]:
    """Each task's needs as the tasks it needs: names checked, patterns expanded.

    A need with a glob character (``*``, ``?``, ``[``) that is not a task id is a pattern over
    the task ids (``fnmatch.fnmatchcase``), expanded in file order; it never matches the task
    that declares it, and must match some other task. A task met twice (listed and matched,
    or matched twice) is needed once; a name listed twice is a warning. The result is in
    file order of the entries, and holds only tasks of the pipeline, never the task itself.
    """
    known = set(ids)
    matched: dict[str, list[str]] = {}  # pattern -> the ids it matches, in file order
    hints: dict[str, list[str]] = {}  # pattern that matches nothing -> ids like it
    out: dict[str, list[str]] = {}
    for tid, needs in raw_needs.items():
        names = _plain_names(needs)
        if names is not None:
            unique = set(names)
            # The usual case, checked in C: known names, each once, not the task itself.
            if unique <= known and tid not in unique and len(unique) == len(names):
                out[tid] = list(names)
                continue
        resolved: list[str] = []
        seen: set[str] = set()
        listed: set[str] = set()
        for loc, need in _entries(tid, needs):
            if need in known:
                if need == tid:
                    c.error(loc, f"tasks.{tid}.needs: a task cannot need itself")
                    continue
                if need in listed:
                    c.warn(loc, f"tasks.{tid}.needs: '{need}' is listed twice")
                listed.add(need)
                found = [need]
            elif GLOB_CHARS.search(need):
                if need not in matched:
                    match = re.compile(fnmatch.translate(need)).match
                    matched[need] = [i for i in ids if match(i)]
                found = [i for i in matched[need] if i != tid]
                if not found and matched[need]:
                    c.error(loc, f"tasks.{tid}.needs: pattern '{need}' matches no task but "
                            f"'{tid}' itself (a pattern never matches the task that declares it)")
                elif not found:
                    if need not in hints:
                        hints[need] = difflib.get_close_matches(need, ids, n=4, cutoff=0.5)
                    like = [i for i in hints[need] if i != tid][:3]
                    hint = f" (task ids like it: {', '.join(like)})" if like else ""
                    c.error(loc, f"tasks.{tid}.needs: pattern '{need}' matches no task{hint}")
            else:
                c.error(loc, f"tasks.{tid}.needs: unknown task '{need}'{did_you_mean(need, ids)}")
                continue
            for n in found:
                if n not in seen:
                    seen.add(n)
                    resolved.append(n)
        out[tid] = resolved
    return out


def _through_patterns(cycle: list[str], raw_needs: dict[str, Any]) -> str:
    """Which steps of a cycle come from a pattern rather than a name, e.g.
    `` (a needs b1 through 'b*')``; empty when every step is a name."""
    notes = []
    for task, need in itertools.pairwise(cycle):
        entries = [n for _, n in _entries(task, raw_needs.get(task))]
        if need in entries:
            continue
        pattern = next((n for n in entries if GLOB_CHARS.search(n)
                        and fnmatch.fnmatchcase(need, n)), None)
        if pattern is not None:
            notes.append(f"{task} needs {need} through '{pattern}'")
    return f" ({'; '.join(notes)})" if notes else ""


SKILL_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _load_skills(c: _Collector, path: Path, data: dict[str, Any], tasks: dict[str, TaskSpec],
                 skills_dir: Path | None) -> tuple[dict[str, Skill], Path | None]:
    declared = data.get("skills") if isinstance(data.get("skills"), str) else None
    sdir = skills_dir or find_skills_dir(path, declared)
    if skills_dir is None and declared and sdir is not None and not sdir.is_dir():
        c.error(("skills",), f"skills: directory '{declared}' does not exist (relative to the "
                "pipeline file)")
    available = sorted(
        p.parent.name if p.name == "SKILL.md" else p.stem
        for p in ([*sdir.glob("*/SKILL.md"), *sdir.glob("*.md")] if sdir and sdir.is_dir() else [])
    )
    skills: dict[str, Skill] = {}
    refused: set[str] = set()
    steps: list[tuple[tuple[str | int, ...], StepSpec]] = []
    for tid, tspec in tasks.items():
        if tspec.loop is not None:
            steps += [(("tasks", tid, "loop", "maker"), tspec.loop.maker),
                      (("tasks", tid, "loop", "checker"), tspec.loop.checker)]
        else:
            steps.append((("tasks", tid), tspec))
    for sloc, spec in steps:
        name = spec.skill
        if not name or name in skills or name in refused:
            continue
        loc = (*sloc, "skill")
        where_ = _dotted(loc)
        if not SKILL_NAME_RE.fullmatch(name) or ".." in name:
            c.error(loc, f"{where_}: '{name}' is not a skill name (a folder name under "
                    "skills/, without '/' or '..')")
            refused.add(name)
            continue
        sfile = find_skill_file(sdir, name)
        if sfile is None:
            if sdir is None:
                where = "no skills/ directory beside the pipeline or in its parent"
            else:
                where = f"no {_rel(sdir / name / 'SKILL.md')} or {_rel(sdir / (name + '.md'))}"
            c.error(loc, f"{where_}: unknown skill '{name}'"
                    f"{did_you_mean(name, available)} ({where})")
            continue
        try:
            skill = load_skill(sfile, expected_name=name)
            load_output_schema(skill)
        except SkillRefused as e:
            c.errors.append(Diagnostic(_rel(sfile), e.line or 1, 1, e.reason))
            refused.add(name)
            continue
        for w in skill.warnings:
            c.warnings.append(Diagnostic(_rel(sfile), None, None, w, "warning"))
        skills[name] = skill
    return skills, sdir


def _rel(p: Path) -> str:
    """A path as short as it can be said from the current directory."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# Fields whose values are used as written: a `${{` there is never evaluated.
_LITERAL_TASK_FIELDS = ("skill", "runner", "needs", "model", "effects", "approval", "timeout",
                        "retries", "heartbeat")
_LITERAL_TOP_FIELDS = ("name", "inputs", "limits", "models", "skills")


def _check_no_expressions(c: _Collector, data: dict[str, Any]) -> None:
    def walk(loc: tuple[str | int, ...], v: Any) -> None:
        if isinstance(v, str) and "${{" in v:
            c.error(loc, f"{_dotted(loc)}: expressions are only evaluated in with:, command and "
                    "env; here '${{' would be taken literally")
        elif isinstance(v, list):
            try:
                if "${{" not in "\0".join(v):  # a list of strings (a long `needs`), in C
                    return
            except TypeError:
                pass
            for i, x in enumerate(v):
                walk((*loc, i), x)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk((*loc, k), x)

    for key in _LITERAL_TOP_FIELDS:
        if key in data:
            walk((key,), data[key])
    if isinstance(data.get("defaults"), dict):
        for key, v in data["defaults"].items():
            if key != "env":
                walk(("defaults", key), v)
    tasks = data.get("tasks")
    if isinstance(tasks, dict):
        for tid, t in tasks.items():
            if isinstance(t, dict):
                for key in _LITERAL_TASK_FIELDS:
                    if key in t:
                        walk(("tasks", tid, key), t[key])


def _check_task_id(c: _Collector, tid: str, folded: dict[str, str]) -> None:
    """Task ids name directories under the run (tasks/<id>/), so they must be safe as one."""
    loc = ("tasks", tid)
    if "/" in tid or "\\" in tid:
        c.error(loc, f"task id {tid!r} contains a path separator; task ids name directories", key=True)
    elif ".." in tid:
        c.error(loc, f"task id {tid!r} contains '..'; task ids name directories", key=True)
    elif any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in tid):
        c.error(loc, f"task id {tid!r} contains a control character", key=True)
    elif len(tid) > 64:
        c.error(loc, f"task id '{tid[:20]}...' is {len(tid)} characters long; at most 64", key=True)
    elif not TASK_ID_RE.fullmatch(tid):
        c.error(loc, f"task id {tid!r} must be letters, digits, '_' and '-' (safe as a file name)",
                key=True)
    elif tid.lower() in folded:
        c.error(loc, f"task id '{tid}' differs from '{folded[tid.lower()]}' only in case; they "
                "would share a directory on macOS and Windows", key=True)
    else:
        folded[tid.lower()] = tid


def _expression_sites(tid: str, spec: TaskSpec) -> list[tuple[tuple[str | int, ...], str, frozenset[str]]]:
    """Where expressions may stand, and the extra names each place may use."""
    sites: list[tuple[tuple[str | int, ...], str, frozenset[str]]] = []

    def walk(loc: tuple[str | int, ...], v: Any, extra: frozenset[str]) -> None:
        if isinstance(v, str):
            if "${{" in v:
                sites.append((loc, v, extra))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk((*loc, i), x, extra)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk((*loc, k), x, extra)

    def step(loc: tuple[str | int, ...], s: StepSpec, extra: frozenset[str]) -> None:
        walk((*loc, "with"), s.with_, extra)
        for i, arg in enumerate(s.command or []):
            walk((*loc, "command", i), arg, extra)
        for k, v in s.env.items():
            walk((*loc, "env", k), v, extra)

    base = ("tasks", tid)
    item = frozenset({"item"}) if spec.foreach else frozenset()
    if spec.loop is not None:
        step((*base, "loop", "maker"), spec.loop.maker, frozenset({"loop"}))
        step((*base, "loop", "checker"), spec.loop.checker, frozenset({"loop"}))
        # what the scheduler evaluates `until` over (besides inputs and tasks); no `loop`
        walk((*base, "loop", "until"), _as_template(spec.loop.until), frozenset({"maker", "checker", "iteration"}))
    else:
        step(base, spec, item)
    if spec.foreach is not None:
        walk((*base, "foreach"), spec.foreach, frozenset())
    if spec.key is not None:
        walk((*base, "key"), spec.key, item)
    if spec.when is not None:
        walk((*base, "when"), _as_template(spec.when), frozenset())
    return sites


def _as_template(value: str) -> str:
    """``when:`` and ``until:`` may be written with or without ``${{ }}``."""
    return value if "${{" in value else "${{ " + value + " }}"


def _check_expression(c: _Collector, loc: tuple[str | int, ...], src: str, inputs: set[str],
                      needs: set[str], task_ids: set[str],
                      schemas: dict[str, dict[str, Any] | None],
                      extra: frozenset[str] = frozenset()) -> None:
    where = _dotted(loc)
    shown = " ".join(src.split())
    try:
        node = expr.parse(src)
    except expr.ExprError as e:
        c.error(loc, f"{where}: bad expression '${{{{ {shown} }}}}': {e}")
        return
    for p in expr.paths(node):
        root = p.parts[0]
        if root == "inputs":
            if len(p.parts) < 2:
                c.error(loc, f"{where}: '{p.dotted()}' must name an input, e.g. inputs.path")
            elif p.parts[1] not in inputs:
                name = str(p.parts[1])
                declared = f"declared: {', '.join(sorted(inputs))}" if inputs else "no inputs are declared"
                c.error(loc, f"{where}: unknown input '{name}'{did_you_mean(name, sorted(inputs))} "
                        f"({declared})")
        elif root == "tasks":
            if len(p.parts) < 3:
                c.error(loc, f"{where}: '{p.dotted()}' must name a task's field, e.g. tasks.plan.output")
                continue
            ref = str(p.parts[1])
            if ref not in task_ids:
                c.error(loc, f"{where}: unknown task '{ref}'{did_you_mean(ref, sorted(task_ids))}")
            elif ref not in needs:
                c.error(loc, f"{where}: '{p.dotted()}' refers to task '{ref}', which is not in "
                        "this task's needs")
            elif p.parts[2] not in TASK_FIELDS:
                f = str(p.parts[2])
                c.error(loc, f"{where}: tasks.{ref} has no field '{f}'{did_you_mean(f, TASK_FIELDS)} "
                        f"(use one of: {', '.join(TASK_FIELDS)})")
            elif p.parts[2] in ("summary", "status") and len(p.parts) > 3:
                c.error(loc, f"{where}: tasks.{ref}.{p.parts[2]} is a string; it has no field "
                        f"'{p.parts[3]}'")
            elif p.parts[2] == "output" and schemas.get(ref):
                problem = _schema_path_problem(schemas[ref] or {}, p.parts[3:])
                if problem:
                    c.error(loc, f"{where}: tasks.{ref}.output{problem} (from the output schema "
                            f"of task {ref}'s skill)")
        elif root in extra:
            continue  # item (fan-out), loop/maker/checker/iteration (review loops)
        else:
            hint = "".join(f"{x}, " for x in sorted(extra))
            c.error(loc, f"{where}: unknown name '{root}' in expression (use {hint}inputs.<name> "
                    "or tasks.<id>.output)")


def _schema_path_problem(schema: dict[str, Any], parts: tuple[str | int, ...]) -> str | None:
    """Why ``parts`` cannot exist in a value that validates against ``schema``, or None.

    Only plain object/array schemas are followed; anything cleverer ($ref, anyOf...) is
    trusted, since a wrong guess here would refuse a pipeline that runs.
    """
    walked = ""
    for part in parts:
        if not isinstance(schema, dict) or any(k in schema for k in ("$ref", "anyOf", "oneOf", "allOf")):
            return None
        if isinstance(part, str):
            if schema.get("type") == "array":
                return f"{walked} is a list; it has no field '{part}' (index it first: [0])"
            props = schema.get("properties")
            if not isinstance(props, dict):
                return None
            if part in props:
                schema = props[part]
            elif schema.get("additionalProperties") is False and not schema.get("patternProperties"):
                return (f"{walked} has no field '{part}'{did_you_mean(part, list(props))} "
                        f"(fields: {', '.join(props)})")
            else:
                return None
            walked += f".{part}"
        else:
            items = schema.get("items")
            if not isinstance(items, dict):
                return None
            schema = items
            walked += f"[{part}]"
    return None
