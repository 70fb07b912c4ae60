"""Skill files: strict ones load silently, bent ones load with warnings, the rest are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentctl.skills import MAX_SKILL_BYTES, SkillRefused, load_output_schema, load_skill


def skill_file(tmp_path: Path, text: str | bytes, folder: str = "demo") -> Path:
    d = tmp_path / folder
    d.mkdir(parents=True, exist_ok=True)
    p = d / "SKILL.md"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def refused(path: Path) -> SkillRefused:
    with pytest.raises(SkillRefused) as info:
        load_skill(path)
    assert "\n" not in info.value.reason
    return info.value


STRICT = """\
---
name: demo
description: Does the demo thing. Use when asked for a demo.
license: MIT
compatibility: Needs python3.
allowed-tools: Bash(git log:*) Read
metadata:
  agentctl.model: gpt-4o-mini
  agentctl.output: assets/output.schema.json
---
You are the demo.
"""


def test_a_strict_skill_loads_without_warnings(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, STRICT))
    assert s.warnings == []
    assert s.name == "demo"
    assert s.description == "Does the demo thing. Use when asked for a demo."
    assert s.license == "MIT" and s.compatibility == "Needs python3."
    assert s.allowed_tools == ["Bash(git log:*)", "Read"]
    assert s.suggested_model == "gpt-4o-mini"
    assert s.body == "You are the demo.\n"
    assert len(s.sha256) == 64


def test_crlf_and_a_bom_are_fine(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, "\ufeff" + STRICT.replace("\n", "\r\n")))
    assert s.warnings == []
    assert s.name == "demo"


def test_a_name_that_differs_from_its_folder(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, STRICT, folder="other"))
    assert s.name == "demo"
    assert s.warnings == ["name 'demo' differs from its folder 'other'"]


def test_a_single_file_skill_is_named_by_its_file(tmp_path: Path) -> None:
    (tmp_path / "demo.md").write_text(STRICT)
    assert load_skill(tmp_path / "demo.md").warnings == []
    (tmp_path / "other.md").write_text(STRICT)
    assert load_skill(tmp_path / "other.md").warnings == ["name 'demo' differs from its file name 'other.md'"]


def test_missing_name_and_description(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, "---\nlicense: MIT\n---\nBody.\n"))
    assert s.name == "demo"
    assert s.description == ""
    assert s.warnings == ["no 'name' field; using 'demo'",
                          "no 'description' field: other agent tools will not discover this skill"]


def test_a_name_that_breaks_the_rule(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, "---\nname: Demo--Skill\ndescription: d\n---\nB\n", folder="Demo--Skill"))
    assert s.warnings == ["name 'Demo--Skill' breaks the spec's rule (lowercase letters, digits and "
                          "single hyphens, at most 64 characters)"]


def test_unknown_fields_are_one_warning(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, "---\nname: demo\ndescription: d\nmodel: opus\ntools: Read\n---\nB\n"))
    assert s.warnings == ["unknown fields 'model', 'tools' (not in the Agent Skills spec; agentctl's "
                          "own settings go in metadata); ignored"]


def test_long_description(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, f"---\nname: demo\ndescription: {'x' * 1025}\n---\nB\n"))
    assert s.warnings == ["description is 1025 characters (the spec allows 1024)"]


@pytest.mark.parametrize(("tools", "parsed", "warning"), [
    ("Read Grep", ["Read", "Grep"], None),
    ("Read, Grep, Bash", ["Read", "Grep", "Bash"], "'allowed-tools' is comma-separated; the spec separates with spaces"),
    ("[Read, Grep]", ["Read", "Grep"], "'allowed-tools' is a YAML list; the spec uses a space-separated string"),
    ("Read,Grep", ["Read", "Grep"], "'allowed-tools' is comma-separated; the spec separates with spaces"),
    ("Bash(npm run a, b) Read", ["Bash(npm run a, b)", "Read"], None),
    ("Bash({baseDir}/scan.sh:*) Bash(curl:*)", ["Bash({baseDir}/scan.sh:*)", "Bash(curl:*)"], None),
])
def test_allowed_tools(tmp_path: Path, tools: str, parsed: list[str], warning: str | None) -> None:
    s = load_skill(skill_file(tmp_path, f"---\nname: demo\ndescription: d\nallowed-tools: {tools}\n---\nB\n"))
    assert s.allowed_tools == parsed
    assert s.warnings == ([warning] if warning else [])


def test_colon_space_in_a_plain_description_loads_leniently(tmp_path: Path) -> None:
    text = ("---\nname: demo\ndescription: Use for demos. Triggers on: 'demo', 'show me'.\n"
            "tools: Read, Grep\n---\nBody.\n")
    s = load_skill(skill_file(tmp_path, text))
    assert s.name == "demo"
    assert s.description == "Use for demos. Triggers on: 'demo', 'show me'."
    assert s.warnings[0] == ("frontmatter is not valid YAML (line 3); read it leniently as "
                             "'key: value' lines")
    assert "'tools'" in s.warnings[1]


def test_example_blocks_stay_in_the_description(tmp_path: Path) -> None:
    text = """\
---
name: demo
description: Use this agent for demos. Examples:

<example>
Context: a user wants a demo
user: "Show me"
assistant: "I'll use the demo agent."
<commentary>
Works with List<String> too.
</commentary>
</example>

model: opus
metadata:
  agentctl.model: gpt-4o
---
Body.
"""
    s = load_skill(skill_file(tmp_path, text))
    assert s.description == (
        "Use this agent for demos. Examples:\n<example> Context: a user wants a demo user: \"Show me\" "
        "assistant: \"I'll use the demo agent.\" <commentary> Works with List<String> too. "
        "</commentary> </example>")
    assert s.metadata == {"agentctl.model": "gpt-4o"}  # a nested block after it still parses
    assert any(w.startswith("unknown field 'model'") for w in s.warnings)
    assert s.body == "Body.\n"


def test_a_tag_that_is_never_closed_does_not_swallow_the_fields_after_it(tmp_path: Path) -> None:
    text = "---\nname: demo\ndescription: Demos: a first line\n<br>\nmodel: opus\n---\nB\n"
    s = load_skill(skill_file(tmp_path, text))
    assert s.description == "Demos: a first line <br>"
    assert any(w.startswith("unknown field 'model'") for w in s.warnings)


def test_lenient_values_are_read_as_yaml_where_they_can_be(tmp_path: Path) -> None:
    text = "---\nname: 'demo'\ndescription: a: b\nallowed-tools: [Read, Grep]\n---\nB\n"
    s = load_skill(skill_file(tmp_path, text))
    assert s.name == "demo"  # quotes removed, as YAML would
    assert s.description == "a: b"
    assert s.allowed_tools == ["Read", "Grep"]


def test_a_comment_before_the_frontmatter(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, "<!--\nBased on another file.\n-->\n\n" + STRICT))
    assert s.name == "demo"
    assert s.warnings == ["text before the opening '---' of the frontmatter was ignored"]


def test_an_empty_body_is_warned_about(tmp_path: Path) -> None:
    s = load_skill(skill_file(tmp_path, "---\nname: demo\ndescription: d\n---\n\n"))
    assert s.warnings == ["the skill has no instructions after the frontmatter"]


# --------------------------------------------------------------------------- refused


def test_no_frontmatter(tmp_path: Path) -> None:
    e = refused(skill_file(tmp_path, "\n# Demo\n\nJust text.\n"))
    assert (e.reason, e.line) == ("no YAML frontmatter: a skill file starts with a '---' line", 2)


def test_an_unclosed_frontmatter(tmp_path: Path) -> None:
    e = refused(skill_file(tmp_path, "---\nname: demo\ndescription: d\n"))
    assert (e.reason, e.line) == ("the frontmatter has no closing '---' line", 1)


def test_a_frontmatter_that_is_not_a_mapping(tmp_path: Path) -> None:
    e = refused(skill_file(tmp_path, "---\n- a\n- b\n---\nB\n"))
    assert (e.reason, e.line) == ("frontmatter must be a mapping of fields", 2)


def test_a_frontmatter_that_cannot_be_read_at_all(tmp_path: Path) -> None:
    e = refused(skill_file(tmp_path, "---\n  [unclosed\n---\nB\n"))
    assert e.reason.startswith("frontmatter is not valid YAML (line 3): invalid YAML: expected ',' or ']'")
    assert e.line == 3


def test_not_utf8(tmp_path: Path) -> None:
    e = refused(skill_file(tmp_path, b"---\nname: demo\ndescription: caf\xe9\n---\n"))
    assert (e.reason, e.line) == ("file is not valid UTF-8 (byte 31)", 3)


def test_too_large(tmp_path: Path) -> None:
    e = refused(skill_file(tmp_path, STRICT + "x" * MAX_SKILL_BYTES))
    assert e.reason == "file is larger than 1024 KiB"


def test_unreadable(tmp_path: Path) -> None:
    e = refused(tmp_path / "missing" / "SKILL.md")
    assert e.reason == "cannot read the file: No such file or directory"


# --------------------------------------------------------------------------- output schemas


def with_schema(tmp_path: Path, rel: str, content: str | None) -> Path:
    p = skill_file(tmp_path, STRICT.replace("assets/output.schema.json", rel))
    if content is not None:
        target = p.parent / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return p


def test_an_output_schema_is_loaded(tmp_path: Path) -> None:
    schema = {"type": "object", "required": ["x"], "properties": {"x": {"type": "string"}}}
    s = load_skill(with_schema(tmp_path, "assets/output.schema.json", json.dumps(schema)))
    load_output_schema(s)
    assert s.output_schema == schema
    assert s.output_schema_path == (s.path.parent / "assets" / "output.schema.json").resolve()


@pytest.mark.parametrize(("rel", "content", "reason"), [
    ("assets/output.schema.json", None, "agentctl.output 'assets/output.schema.json' does not exist"),
    ("../outside.json", "{}", "agentctl.output '../outside.json' points outside the skill's folder"),
    ("assets/o.json", "{nope", "agentctl.output 'assets/o.json' is not valid JSON: Expecting "
                               "property name enclosed in double quotes (line 1, column 2)"),
    ("assets/o.json", "[1]", "agentctl.output 'assets/o.json' must hold a JSON object (a JSON Schema)"),
    ("assets/o.json", '{"type": "thing"}', "agentctl.output 'assets/o.json' is not a valid JSON "
                                          "Schema: 'thing' is not valid under any of the given schemas"),
])
def test_bad_output_schemas_are_refused_at_their_line(tmp_path: Path, rel: str, content: str | None,
                                                      reason: str) -> None:
    s = load_skill(with_schema(tmp_path, rel, content))
    with pytest.raises(SkillRefused) as info:
        load_output_schema(s)
    assert (info.value.reason, info.value.line) == (reason, 9)
