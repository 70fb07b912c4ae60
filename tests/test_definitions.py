"""Loading pipelines: the models they become, and every error a user can fix, with its place."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from agentctl import yamlsafe
from agentctl.definitions import load_pipeline
from agentctl.errors import DefinitionError
from agentctl.vocab import Effects

SKILL = """\
---
name: {name}
description: A test skill called {name}.
{extra}---
You are {name}.
"""

SCHEMA = '{"type": "object", "additionalProperties": false, "required": ["steps"],' \
         ' "properties": {"steps": {"type": "array", "items": {"type": "object",' \
         ' "additionalProperties": false, "properties": {"id": {"type": "string"}}}}}}'


def project(tmp_path: Path, pipeline: str, skills: tuple[str, ...] = ("explorer", "planner")) -> Path:
    """A project layout: pipelines/p.yaml and skills/<name>/SKILL.md."""
    for name in skills:
        d = tmp_path / "skills" / name
        d.mkdir(parents=True)
        extra = ""
        if name == "planner":
            (d / "assets").mkdir()
            (d / "assets" / "output.schema.json").write_text(SCHEMA)
            extra = "metadata:\n  agentctl.output: assets/output.schema.json\n"
        (d / "SKILL.md").write_text(SKILL.format(name=name, extra=extra))
    p = tmp_path / "pipelines" / "p.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(pipeline))
    return p


def errors(path: Path) -> list[str]:
    """Every diagnostic line, with the file name shortened to 'p.yaml'."""
    with pytest.raises(DefinitionError) as info:
        load_pipeline(path)
    lines = [str(d) for d in info.value.diagnostics]
    return [line.replace(str(path), path.name) for line in lines]


def only_error(path: Path) -> str:
    errs = [e for e in errors(path) if ": error: " in e]
    assert len(errs) == 1, errs
    return errs[0]


GOOD = """\
    name: review
    inputs:
      path: "."
      depth: {default: 2, description: How deep.}
    defaults:
      model: offline/echo
      timeout: 5m
      retries: 1
      heartbeat: 5s
    limits:
      concurrency: 2
      budget: {usd: 0.5, tokens: 1000}
    tasks:
      explore-layout:
        command: [python3, layout.py, "${{ inputs.path }}"]
        effects: read-only
      explore-api:
        skill: explorer
        with: {angle: public API, path: "${{ inputs.path }}"}
      plan:
        skill: planner
        needs: [explore-layout, explore-api]
        timeout: 1h30m
        with: {facts: "${{ tasks.explore-api.output }}"}
      review:
        command: [echo, "${{ tasks.plan.output.steps[0].id }}"]
        needs: plan
        retries: 0
        approval: required
"""


# --------------------------------------------------------------------------- what loads


def test_a_good_pipeline_becomes_models(tmp_path: Path) -> None:
    defn = load_pipeline(project(tmp_path, GOOD))
    p = defn.pipeline
    assert p.name == "review"
    assert list(p.tasks) == ["explore-layout", "explore-api", "plan", "review"]
    assert p.inputs["path"].default == "."  # the shorthand
    assert p.inputs["depth"].default == 2
    assert p.tasks["plan"].needs == ["explore-layout", "explore-api"]
    assert p.tasks["review"].needs == ["plan"]  # a string is a list of one
    assert p.tasks["explore-api"].with_ == {"angle": "public API", "path": "${{ inputs.path }}"}
    assert p.tasks["explore-layout"].command == ["python3", "layout.py", "${{ inputs.path }}"]
    assert p.limits.concurrency == 2 and p.limits.budget.usd == 0.5
    assert defn.warnings == []
    assert set(defn.skills) == {"explorer", "planner"}
    assert defn.skills["planner"].output_schema is not None


def test_defaults_are_inherited_and_overridden(tmp_path: Path) -> None:
    defn = load_pipeline(project(tmp_path, GOOD))
    assert defn.timeout_of("explore-api") == 300.0
    assert defn.timeout_of("plan") == 5400.0
    assert defn.retries_of("explore-api") == 1
    assert defn.retries_of("review") == 0
    assert defn.heartbeat_of("plan") == 5.0
    assert defn.model_of("plan") == "offline/echo"
    assert defn.model_of("plan", "gpt-4o") == "gpt-4o"  # --model overrides defaults.model
    assert defn.runner_of("explore-layout") == "command"
    assert defn.runner_of("plan") == "llm"
    assert defn.effects_of("explore-layout") is Effects.READ_ONLY
    assert defn.effects_of("review") is Effects.MUTATING  # commands default to mutating
    assert defn.effects_of("plan") is Effects.READ_ONLY  # llm tasks to read-only
    assert defn.needs_approval("review") and not defn.needs_approval("plan")


def test_skills_lookup_rules(tmp_path: Path) -> None:
    pipeline = "name: x\ntasks:\n  a: {skill: solo}\n"
    # skills/ beside the pipeline, as <name>.md
    (tmp_path / "beside" / "skills").mkdir(parents=True)
    (tmp_path / "beside" / "skills" / "solo.md").write_text(SKILL.format(name="solo", extra=""))
    (tmp_path / "beside" / "p.yaml").write_text(pipeline)
    assert load_pipeline(tmp_path / "beside" / "p.yaml").skills["solo"].name == "solo"
    # a declared skills: directory, relative to the pipeline file
    (tmp_path / "declared" / "lib" / "solo").mkdir(parents=True)
    (tmp_path / "declared" / "lib" / "solo" / "SKILL.md").write_text(SKILL.format(name="solo", extra=""))
    (tmp_path / "declared" / "p.yaml").write_text("skills: lib\n" + pipeline)
    defn = load_pipeline(tmp_path / "declared" / "p.yaml")
    assert defn.skills_dir == (tmp_path / "declared" / "lib").resolve()


def test_durations(tmp_path: Path) -> None:
    text = GOOD.replace("timeout: 5m", "timeout: 250ms").replace("heartbeat: 5s", "heartbeat: 90")
    defn = load_pipeline(project(tmp_path, text))
    assert defn.pipeline.defaults.timeout == 0.25
    assert defn.pipeline.defaults.heartbeat == 90.0


def test_needs_listed_twice_is_a_warning(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {command: [a]}\n  b: {command: [b], needs: [a, a]}\n")
    defn = load_pipeline(p)
    assert [str(w).replace(str(p), "p.yaml") for w in defn.warnings] == [
        "p.yaml:4:32: warning: tasks.b.needs: 'a' is listed twice"]


def test_skill_warnings_are_passed_on(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {skill: explorer}\n", skills=())
    d = tmp_path / "skills" / "explorer"
    d.mkdir(parents=True)
    (d / "SKILL.md").write_text("---\nname: explorer\ndescription: x\nmodel: opus\n---\nGo.\n")
    defn = load_pipeline(p)
    assert len(defn.warnings) == 1
    assert defn.warnings[0].path.endswith("SKILL.md")
    assert "unknown field 'model'" in defn.warnings[0].message


# --------------------------------------------------------------------------- the errors


def test_malformed_yaml(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {command: [a, b}\n")
    assert re.fullmatch(r"p\.yaml:3:\d+: error: invalid YAML: .*", only_error(p))
    assert only_error(p).startswith("p.yaml:3:")


def test_tabs_are_malformed_yaml_with_a_place(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n\ta: {command: [a]}\n")
    assert only_error(p).startswith("p.yaml:3:1: error: invalid YAML: found character '\\t'")


def test_an_unquoted_template_placeholder(tmp_path: Path) -> None:
    # CrewAI's flow templates write `name: {{flow_name}}`, which YAML reads as nested mappings.
    p = project(tmp_path, "name: {{flow_name}}\ntasks:\n  a: {command: [a]}\n")
    assert only_error(p) == ("p.yaml:1:8: error: mapping keys must be plain scalars (an unquoted "
                             "'{{' opens a nested mapping: quote template text)")


def test_duplicate_keys(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        tasks:
          plan: {command: [a]}
          review: {command: [b]}
          plan: {command: [c]}
        """)
    assert only_error(p) == "p.yaml:5:3: error: duplicate key 'plan' (first defined at line 3)"


def test_wrong_types(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        limits:
          concurrency: many
        tasks:
          a:
            command: [a]
            retries: two
            needs: 3
          b:
            skill: [explorer]
            with: [angle]
        """)
    assert errors(p) == [
        "p.yaml:3:16: error: limits.concurrency: expected a whole number, got 'many'",
        "p.yaml:7:14: error: tasks.a.retries: expected a whole number, got 'two'",
        "p.yaml:8:12: error: tasks.a.needs: expected a list, got 3",
        "p.yaml:10:12: error: tasks.b.skill: expected a string, got a list",
        "p.yaml:11:11: error: tasks.b.with: expected a mapping, got a list",
    ]


def test_command_must_be_an_argv_list(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a:\n    command: python3 run.py --fast\n")
    assert only_error(p) == ("p.yaml:4:14: error: tasks.a.command: command must be a list of "
                             "arguments, e.g. [python3, script.py]; no shell is used")


def test_unknown_fields_with_did_you_mean(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        defaults:
          retrys: 2
        limits:
          budget: {usd: 1, tokenz: 5}
        tasks:
          a:
            command: [a]
            neds: [b]
            colour: red
        """)
    assert errors(p) == [
        "p.yaml:3:3: error: defaults.retrys: unknown field 'retrys' (did you mean 'retries'?)",
        "p.yaml:5:20: error: limits.budget.tokenz: unknown field 'tokenz' (did you mean 'tokens'?)",
        "p.yaml:9:5: error: tasks.a.neds: unknown field 'neds' (did you mean 'needs'?)",
        "p.yaml:10:5: error: tasks.a.colour: unknown field 'colour'",
    ]


def test_did_you_mean_looks_in_the_right_model(tmp_path: Path) -> None:
    # 'budget' here is an input's name, not the budget model: no 'tokens' suggestion for 'tokenz'.
    p = project(tmp_path, """\
        name: x
        inputs:
          budget: {defualt: 1, tokenz: 2}
        tasks:
          a: {command: [a], budget: {tokenz: 5}}
        """)
    assert errors(p) == [
        "p.yaml:3:12: error: inputs.budget.defualt: unknown field 'defualt' (did you mean 'default'?)",
        "p.yaml:3:24: error: inputs.budget.tokenz: unknown field 'tokenz'",
        "p.yaml:5:30: error: tasks.a.budget.tokenz: unknown field 'tokenz' (did you mean 'tokens'?)",
    ]


def test_top_level_typo(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntask:\n  a: {command: [a]}\n")
    assert errors(p) == [
        "p.yaml:1:1: error: the pipeline has no 'tasks'",
        "p.yaml:2:1: error: task: unknown field 'task' (did you mean 'tasks'?)",
    ]


def test_task_with_neither_command_nor_skill(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a:\n    with: {x: 1}\n")
    assert only_error(p) == "p.yaml:3:3: error: tasks.a: a task needs a 'command' (an argv list) or a 'skill'"


def test_a_cycle_is_named_whole(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        tasks:
          start: {command: [a]}
          a: {command: [a], needs: [start, c]}
          b: {command: [b], needs: a}
          c: {command: [c], needs: [b]}
        """)
    assert only_error(p) == "p.yaml:4:28: error: tasks.a.needs: tasks form a cycle: a -> c -> b -> a"


def test_every_cycle_is_reported(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        tasks:
          a: {command: [a], needs: b}
          b: {command: [b], needs: a}
          c: {command: [c], needs: d}
          d: {command: [d], needs: c}
        """)
    assert errors(p) == [
        "p.yaml:3:28: error: tasks.a.needs: tasks form a cycle: a -> b -> a",
        "p.yaml:5:28: error: tasks.c.needs: tasks form a cycle: c -> d -> c",
    ]


def test_self_needs(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {command: [a], needs: [a]}\n")
    assert only_error(p) == "p.yaml:3:29: error: tasks.a.needs: a task cannot need itself"


def test_unknown_task_in_needs(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        tasks:
          explore-api: {command: [a]}
          plan:
            command: [b]
            needs:
              - explor-api
              - nothing-like-it
        """)
    assert errors(p) == [
        "p.yaml:7:9: error: tasks.plan.needs: unknown task 'explor-api' (did you mean 'explore-api'?)",
        "p.yaml:8:9: error: tasks.plan.needs: unknown task 'nothing-like-it'",
    ]


@pytest.mark.parametrize(("task_id", "message"), [
    ("a/b", "task id 'a/b' contains a path separator; task ids name directories"),
    ("a\\\\b", "task id 'a\\\\b' contains a path separator; task ids name directories"),
    ("..", "task id '..' contains '..'; task ids name directories"),
    ("x..y", "task id 'x..y' contains '..'; task ids name directories"),
    ("bell\\x07", "task id 'bell\\x07' contains a control character"),
    ("new\\nline", "task id 'new\\nline' contains a control character"),
    ("a" * 65, "task id 'aaaaaaaaaaaaaaaaaaaa...' is 65 characters long; at most 64"),
    ("has space", "task id 'has space' must be letters, digits, '_' and '-' (safe as a file name)"),
    (".hidden", "task id '.hidden' must be letters, digits, '_' and '-' (safe as a file name)"),
])
def test_unsafe_task_ids(tmp_path: Path, task_id: str, message: str) -> None:
    # Double-quoted YAML, so that escapes like \x07 become the control characters themselves.
    p = project(tmp_path, f'name: x\ntasks:\n  "{task_id}": {{command: [a]}}\n')
    assert only_error(p) == f"p.yaml:3:3: error: {message}"


def test_a_64_character_task_id_is_fine(tmp_path: Path) -> None:
    p = project(tmp_path, f"name: x\ntasks:\n  {'a' * 64}: {{command: [a]}}\n")
    assert list(load_pipeline(p).pipeline.tasks) == ["a" * 64]


def test_task_ids_that_differ_only_in_case(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  plan: {command: [a]}\n  Plan: {command: [b]}\n")
    assert only_error(p) == ("p.yaml:4:3: error: task id 'Plan' differs from 'plan' only in case; "
                             "they would share a directory on macOS and Windows")


def test_unknown_expression_references(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        inputs: {path: "."}
        tasks:
          a:
            command: [a, "${{ inputs.pth }}", "${{ env.HOME }}", "${{ inputs }}"]
          b:
            command: [b, "${{ tasks.nope.output }}", "${{ inputs.path == }}"]
            needs: a
            with: {x: "${{ tasks.a.outptu }}", y: "${{ tasks.a }}"}
        """)
    assert errors(p) == [
        "p.yaml:5:18: error: tasks.a.command[1]: unknown input 'pth' (did you mean 'path'?) (declared: path)",
        "p.yaml:5:39: error: tasks.a.command[2]: unknown name 'env' in expression (use inputs.<name> or tasks.<id>.output)",
        "p.yaml:5:58: error: tasks.a.command[3]: 'inputs' must name an input, e.g. inputs.path",
        "p.yaml:7:18: error: tasks.b.command[1]: unknown task 'nope'",
        "p.yaml:7:46: error: tasks.b.command[2]: bad expression '${{ inputs.path == }}': expression ends too early",
        "p.yaml:9:15: error: tasks.b.with.x: tasks.a has no field 'outptu' (did you mean 'output'?) "
        "(use one of: output, summary, status, deliverables, blockers, next)",
        "p.yaml:9:43: error: tasks.b.with.y: 'tasks.a' must name a task's field, e.g. tasks.plan.output",
    ]


def test_references_to_tasks_not_in_needs(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        tasks:
          a: {command: [a]}
          b: {command: [b], needs: a}
          c:
            command: [c, "${{ tasks.a.output }}"]
            needs: b
        """)
    assert only_error(p) == ("p.yaml:6:18: error: tasks.c.command[1]: 'tasks.a.output' refers to "
                             "task 'a', which is not in this task's needs")


def test_references_checked_against_the_output_schema(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        tasks:
          plan: {skill: planner}
          review:
            command: [c, "${{ tasks.plan.output.stepz }}", "${{ tasks.plan.output.steps[0].idd }}"]
            needs: plan
        """)
    assert errors(p) == [
        "p.yaml:5:18: error: tasks.review.command[1]: tasks.plan.output has no field 'stepz' "
        "(did you mean 'steps'?) (fields: steps) (from the output schema of task plan's skill)",
        "p.yaml:5:52: error: tasks.review.command[2]: tasks.plan.output.steps[0] has no field "
        "'idd' (did you mean 'id'?) (fields: id) (from the output schema of task plan's skill)",
    ]


def test_expressions_where_they_are_never_evaluated(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        inputs: {m: gpt-4o}
        tasks:
          a:
            command: [a, "${{ inputs.m"]
            model: "${{ inputs.m }}"
        """)
    assert errors(p) == [
        "p.yaml:5:18: error: tasks.a.command[1]: '${{' without a closing '}}'",
        "p.yaml:6:12: error: tasks.a.model: expressions are only evaluated in with:, command and env; "
        "here '${{' would be taken literally",
    ]


def test_missing_skill_files(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: x
        tasks:
          a: {skill: explorr}
          b: {skill: ../../etc/passwd}
        """)
    assert errors(p) == [
        f"p.yaml:3:14: error: tasks.a.skill: unknown skill 'explorr' (did you mean 'explorer'?) "
        f"(no {tmp_path / 'skills/explorr/SKILL.md'} or {tmp_path / 'skills/explorr.md'})",
        "p.yaml:4:14: error: tasks.b.skill: '../../etc/passwd' is not a skill name (a folder name "
        "under skills/, without '/' or '..')",
    ]


def test_no_skills_directory_at_all(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {skill: explorer}\n", skills=())
    assert only_error(p) == ("p.yaml:3:14: error: tasks.a.skill: unknown skill 'explorer' (no "
                             "skills/ directory beside the pipeline or in its parent)")


def test_a_refused_skill_is_reported_once_in_its_own_file(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {skill: broken}\n  b: {skill: broken}\n", skills=())
    d = tmp_path / "skills" / "broken"
    d.mkdir(parents=True)
    (d / "SKILL.md").write_text("# no frontmatter here\n")
    assert errors(p) == [
        f"{d / 'SKILL.md'}:1:1: error: no YAML frontmatter: a skill file starts with a '---' line"]


def test_a_missing_output_schema_points_at_its_metadata_line(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {skill: planner}\n")
    (tmp_path / "skills" / "planner" / "assets" / "output.schema.json").unlink()
    assert errors(p) == [f"{tmp_path / 'skills/planner/SKILL.md'}:5:1: error: agentctl.output "
                         "'assets/output.schema.json' does not exist"]


@pytest.mark.parametrize("value", ["5 minutes", "1h30", "-5s", "fast", "true"])
def test_bad_durations(tmp_path: Path, value: str) -> None:
    p = project(tmp_path, f"name: x\ntasks:\n  a:\n    command: [a]\n    timeout: {value}\n")
    assert re.fullmatch(r"p\.yaml:5:14: error: tasks\.a\.timeout: (bad duration .* \(use e\.g\. "
                        r"30s, 5m, 1h\)|a duration cannot be negative)", only_error(p))


def test_unknown_effects(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a:\n    command: [a]\n    effects: readonly\n")
    assert only_error(p) == ("p.yaml:5:14: error: tasks.a.effects: unknown effects 'readonly' (did "
                             "you mean 'read-only'?) (one of: read-only, append-only, mutating, irreversible)")


def test_non_utf8_file(tmp_path: Path) -> None:
    p = project(tmp_path, "")
    p.write_bytes(b"name: x\ntasks:\n  a: {command: [caf\xe9]}\n")
    assert only_error(p) == "p.yaml:3:1: error: file is not valid UTF-8 (byte 34)"


def test_control_characters_in_the_file(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\ntasks:\n  a: {command: [a\x01]}\n")
    assert only_error(p) == ("p.yaml:3:18: error: control character U+0001 is not allowed in YAML "
                             "(write it as an escape in a double-quoted string)")


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    # The billion laughs: nine levels of ten aliases each would expand to 10^9 strings.
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    p = project(tmp_path, "name: x\n" + "\n".join(lines) + "\ntasks:\n  t: {command: [a]}\n")
    msg = only_error(p)
    assert msg.startswith("p.yaml:2:5: error: ")
    assert "aliases are not allowed" in msg


def test_a_bare_alias_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(yamlsafe.YamlError, match="aliases are not allowed") as info:
        yamlsafe.load("a: *x\n")
    assert (info.value.line, info.value.col) == (1, 4)


def test_a_file_over_the_size_cap(tmp_path: Path) -> None:
    p = project(tmp_path, "")
    p.write_bytes(b"name: x\n" + b"# padding\n" * (yamlsafe.MAX_BYTES // 10 + 1))
    assert only_error(p) == "p.yaml:1:1: error: file is larger than 1024 KiB; refusing to parse it"


def test_deep_nesting_is_refused_not_recursed(tmp_path: Path) -> None:
    p = project(tmp_path, "name: x\nx: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert only_error(p).startswith(f"p.yaml:2:{yamlsafe.MAX_DEPTH + 3}: error: values are nested more than")


def test_empty_file(tmp_path: Path) -> None:
    p = project(tmp_path, "")
    assert only_error(p) == "p.yaml:1:1: error: a pipeline file must be a YAML mapping with 'name' and 'tasks'"


def test_all_errors_at_once_sorted_by_line(tmp_path: Path) -> None:
    p = project(tmp_path, """\
        name: Bad Name
        defaults:
          timeout: soon
        tasks:
          a/b: {command: [a]}
          plan:
            skill: nowhere
            needs: [explore, plan]
            effects: sometimes  # a bad field does not hide the unknown skill above
          review:
            command: [r, "${{ tasks.plan.output }}"]
        """)
    errs = errors(p)
    lines = [int(e.split(":")[1]) for e in errs]
    assert lines == sorted(lines)
    assert [e.split(": error: ")[0] for e in errs] == [
        "p.yaml:1:7", "p.yaml:3:12", "p.yaml:5:3", "p.yaml:7:12", "p.yaml:8:13", "p.yaml:8:22",
        "p.yaml:9:14", "p.yaml:11:18"]
    assert all(re.fullmatch(r"p\.yaml:\d+:\d+: error: \S.*", e) for e in errs)
