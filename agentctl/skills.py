"""Skill files (Agent Skills format): Markdown with YAML frontmatter, loaded leniently.

Real-world files bend the spec: unknown fields, names that differ from their folder, plain
descriptions with ``: `` inside (invalid YAML), comments before the frontmatter. As the spec's
client guide advises, we warn and go on wherever the meaning is clear, and refuse (with a
one-line reason) only what cannot be understood as a skill.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from agentctl import yamlsafe
from agentctl.models import Skill

SPEC_FIELDS = ("name", "description", "license", "compatibility", "metadata", "allowed-tools")
NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_SKILL_BYTES = 1024 * 1024


class SkillRefused(Exception):
    """The file cannot be understood as a skill. ``line`` is 1-based where known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason)


def split_frontmatter(text: str) -> tuple[str, str, int, list[str]]:
    """Return (frontmatter, body, line of the first frontmatter line, warnings)."""
    warnings: list[str] = []
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.splitlines(keepends=True)
    i = 0
    # Tolerate blank lines and HTML comments before the opening '---'.
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped == "":
            i += 1
            continue
        if stripped.startswith("<!--"):
            while i < len(lines) and "-->" not in lines[i]:
                i += 1
            i += 1
            warnings.append("text before the opening '---' of the frontmatter was ignored")
            continue
        break
    if i >= len(lines) or lines[i].strip() != "---":
        raise SkillRefused("no YAML frontmatter: a skill file starts with a '---' line", i + 1)
    start = i + 1
    for j in range(start, len(lines)):
        if lines[j].rstrip("\r\n").rstrip() in ("---", "..."):
            return "".join(lines[start:j]), "".join(lines[j + 1 :]), start + 1, warnings
    raise SkillRefused("the frontmatter has no closing '---' line", i + 1)


_TOOL = re.compile(r"(?:[^\s,(]*\([^()]*\))+[^\s,(]*|[^\s,(]+")
_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)\s*:(?:\s+(.*)|\s*)$")
_OPEN_TAG = re.compile(r"^\s*<([A-Za-z][A-Za-z0-9_-]*)(?:\s[^<>]*)?>")
_CLOSE_TAG = re.compile(r"</([A-Za-z][A-Za-z0-9_-]*)\s*>")


def _fold(lines: list[str]) -> str:
    """Join the lines of a plain scalar as YAML folds them: a blank line is a line break."""
    out: list[str] = []
    for line in (x.strip() for x in lines):
        if not line:
            out.append("\n")
        elif out and out[-1] != "\n":
            out.append(" " + line)
        else:
            out.append(line)
    return "".join(out).strip()


def _scalar(text: str) -> Any:
    """A one-line value as YAML reads it when it can ('quoted', [a, b], 42), else its text."""
    try:
        value = yamlsafe.load("v: " + text).data
    except yamlsafe.YamlError:
        return text
    return value["v"] if isinstance(value, dict) and "v" in value else text


def _lenient_frontmatter(text: str) -> dict[str, Any]:
    """Read 'key: value' lines when the frontmatter is not valid YAML.

    A value runs until the next top-level key; indented lines continue it, and so does
    everything inside an open <tag>...</tag> block (Claude Code agents put <example> blocks,
    with 'user:' and 'assistant:' lines, in a plain description). Nested blocks that parse as
    YAML on their own (metadata: ...) are parsed as such.
    """
    out: dict[str, Any] = {}
    key: str | None = None
    buf: list[str] = []
    open_tags: list[str] = []
    # A tag counts as a block only if it is closed somewhere: a stray <br> swallows nothing.
    closed = {t.lower() for t in _CLOSE_TAG.findall(text)}

    def flush() -> None:
        if key is None:
            return
        first, rest = (buf[0] if buf else ""), buf[1:]
        while rest and not rest[-1].strip():
            rest.pop()
        value: Any
        if first in ("|", "|-", "|+", ">", ">-", ">+") or (first == "" and rest):
            if first == "" and rest:
                try:
                    parsed = yamlsafe.load(f"{key}:\n" + "\n".join(rest)).data
                    if isinstance(parsed, dict):
                        out[key] = parsed.get(key)
                        return
                except yamlsafe.YamlError:
                    pass
            if first.startswith("|"):
                value = "\n".join(line.strip() for line in rest)
            else:
                value = _fold(rest)
        elif rest:
            value = _fold([first, *rest])
        else:
            value = _scalar(first)
        out[key] = value

    for raw in text.splitlines():
        m = _KEY_LINE.match(raw)
        if m and not raw[:1].isspace() and not open_tags:
            flush()
            key, buf = m.group(1), [(m.group(2) or "").strip()]
            continue
        if key is not None:
            buf.append(raw)
        # Only a tag that begins a line opens a block: `List<String>` in a sentence does not.
        opened = _OPEN_TAG.match(raw)
        if opened and opened.group(1).lower() in closed:
            open_tags.append(opened.group(1).lower())
        for tag in _CLOSE_TAG.findall(raw):
            if tag.lower() in open_tags:
                # Close the innermost tag of that name, and anything left open inside it.
                del open_tags[len(open_tags) - 1 - open_tags[::-1].index(tag.lower()):]
    flush()
    return out


def load_skill(path: Path, *, expected_name: str | None = None) -> Skill:
    """Load one skill file. Raises SkillRefused with a one-line reason."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SkillRefused(f"cannot read the file: {e.strerror or e}") from None
    if len(raw) > MAX_SKILL_BYTES:
        raise SkillRefused(f"file is larger than {MAX_SKILL_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SkillRefused(f"file is not valid UTF-8 (byte {e.start})",
                           raw[: e.start].count(b"\n") + 1) from None
    front, body, fm_line, warnings = split_frontmatter(text)

    data: Any
    try:
        data = yamlsafe.load(front).data
    except yamlsafe.YamlError as e:
        data = _lenient_frontmatter(front)
        where = f" (line {e.line + fm_line - 1})" if e.line else ""
        if not data:
            raise SkillRefused(f"frontmatter is not valid YAML{where}: {e.message}",
                               (e.line or 1) + fm_line - 1) from None
        warnings.append(f"frontmatter is not valid YAML{where}; read it leniently as 'key: value' lines")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SkillRefused("frontmatter must be a mapping of fields", fm_line)

    folder = path.parent.name if path.name == "SKILL.md" else path.stem
    name = data.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        name = expected_name or folder
        warnings.append(f"no 'name' field; using '{name}'")
    elif not isinstance(name, str):
        name = str(name)
        warnings.append("'name' is not a string")
    name = name.strip()
    if not NAME_RE.fullmatch(name) or len(name) > 64:
        warnings.append(
            f"name '{name}' breaks the spec's rule (lowercase letters, digits and single "
            "hyphens, at most 64 characters)"
        )
    if name != folder:
        where = f"its folder '{folder}'" if path.name == "SKILL.md" else f"its file name '{path.name}'"
        warnings.append(f"name '{name}' differs from {where}")

    description = data.get("description")
    if description is None or (isinstance(description, str) and not description.strip()):
        warnings.append("no 'description' field: other agent tools will not discover this skill")
        description = ""
    elif not isinstance(description, str):
        description = json.dumps(description) if isinstance(description, dict | list) else str(description)
        warnings.append("'description' is not a string")
    if len(description) > 1024:
        warnings.append(f"description is {len(description)} characters (the spec allows 1024)")

    unknown = [str(k) for k in data if k not in SPEC_FIELDS]
    if unknown:
        listed = ", ".join(f"'{k}'" for k in unknown)
        warnings.append(f"unknown field{'s' if len(unknown) > 1 else ''} {listed} (not in the Agent "
                        "Skills spec; agentctl's own settings go in metadata); ignored")

    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        warnings.append("'metadata' is not a mapping; ignored")
        metadata = {}
    for k, v in metadata.items():
        if not isinstance(v, str):
            warnings.append(f"metadata '{k}' is not a string")

    tools_raw = data.get("allowed-tools")
    tools: list[str] = []
    if isinstance(tools_raw, str):
        # `Bash(git log:*)` is one tool: spaces and commas inside parentheses do not separate.
        if "," in re.sub(r"\([^()]*\)", "", tools_raw):
            warnings.append("'allowed-tools' is comma-separated; the spec separates with spaces")
        tools = _TOOL.findall(tools_raw)
    elif isinstance(tools_raw, list):
        warnings.append("'allowed-tools' is a YAML list; the spec uses a space-separated string")
        tools = [str(t) for t in tools_raw]
    elif tools_raw is not None:
        warnings.append("'allowed-tools' is not a string; ignored")

    license_ = data.get("license")
    compat = data.get("compatibility")
    if compat is not None and len(str(compat)) > 500:
        warnings.append("compatibility is longer than 500 characters")
    if not body.strip():
        warnings.append("the skill has no instructions after the frontmatter")

    return Skill(
        name=name,
        description=description,
        body=body,
        path=path,
        metadata=metadata,
        license=None if license_ is None else str(license_),
        compatibility=None if compat is None else str(compat),
        allowed_tools=tools,
        warnings=warnings,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def load_output_schema(skill: Skill) -> None:
    """Load ``metadata.agentctl.output`` (a JSON Schema file in the skill's folder).

    Raises SkillRefused when the file is missing, escapes the folder or is not a schema.
    """
    rel = skill.metadata.get("agentctl.output")
    if not rel:
        return
    line = _line_of(skill.path, "agentctl.output")
    base = skill.path.parent.resolve()
    target = (base / str(rel)).resolve()
    if base not in target.parents:
        raise SkillRefused(f"agentctl.output '{rel}' points outside the skill's folder", line)
    try:
        schema = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SkillRefused(f"agentctl.output '{rel}' does not exist", line) from None
    except json.JSONDecodeError as e:
        raise SkillRefused(f"agentctl.output '{rel}' is not valid JSON: {e.msg} "
                           f"(line {e.lineno}, column {e.colno})", line) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SkillRefused(f"agentctl.output '{rel}' cannot be read: {e}", line) from None
    if not isinstance(schema, dict):
        raise SkillRefused(f"agentctl.output '{rel}' must hold a JSON object (a JSON Schema)", line)
    import jsonschema  # imported here: only needed when a skill declares a schema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        first = " ".join(e.message.split())
        raise SkillRefused(f"agentctl.output '{rel}' is not a valid JSON Schema: {first}", line) from None
    skill.output_schema = schema
    skill.output_schema_path = target


def _line_of(path: Path, needle: str) -> int | None:
    """The first line of ``path`` that mentions ``needle`` (for pointing at a metadata entry)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return None
