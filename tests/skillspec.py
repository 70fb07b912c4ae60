"""A small strict checker of the Agent Skills rules, written apart from agentctl's loader.

It shares no code with ``agentctl.skills`` on purpose: the corpus test compares the two, so a
bug in the loader cannot hide behind the same bug here. The rules (agentskills.io):

- the file starts with a ``---`` line, and the frontmatter up to the next ``---`` is a YAML
  mapping;
- ``name``: 1-64 characters, lowercase letters and digits in hyphen-separated groups, equal to
  the skill's folder (for a ``<name>.md`` file, to the file name without ``.md``);
- ``description``: a non-empty string of at most 1024 characters;
- only ``name``, ``description``, ``license``, ``compatibility`` (1-500 characters),
  ``metadata`` (string keys to string values) and ``allowed-tools`` (a space-delimited
  string);
- and, agentctl's own rule, a body: a skill without instructions is no prompt.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

SPEC_FIELDS = {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def expected_name(path: Path) -> str:
    return path.parent.name if path.name == "SKILL.md" else path.name.removesuffix(".md")


def strict_problems(path: Path) -> list[str]:
    """Every way ``path`` breaks the strict rules; empty when it follows them all."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ["not UTF-8"]
    lines = text.split("\n")
    if lines[0].rstrip("\r") != "---":
        return ["the first line is not '---'"]
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip("\r") == "---"), None)
    if end is None:
        return ["no closing '---'"]
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return ["the frontmatter is not valid YAML"]
    if not isinstance(data, dict):
        return ["the frontmatter is not a mapping"]

    problems = []
    unknown = sorted(str(k) for k in data if k not in SPEC_FIELDS)
    if unknown:
        problems.append(f"fields outside the spec: {unknown}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > 64:
        problems.append(f"bad name {name!r}")
    elif name != expected_name(path):
        problems.append(f"name {name!r} is not {expected_name(path)!r}")
    desc = data.get("description")
    if not isinstance(desc, str) or not desc.strip() or len(desc) > 1024:
        problems.append("description is not a string of 1-1024 characters")
    if "license" in data and not isinstance(data["license"], str):
        problems.append("license is not a string")
    compat = data.get("compatibility")
    if "compatibility" in data and not (isinstance(compat, str) and 1 <= len(compat) <= 500):
        problems.append("compatibility is not a string of 1-500 characters")
    meta = data.get("metadata")
    if "metadata" in data and not (isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        problems.append("metadata is not a mapping of strings to strings")
    tools = data.get("allowed-tools")
    if "allowed-tools" in data and not (
            isinstance(tools, str) and "," not in re.sub(r"\([^()]*\)", "", tools)):
        problems.append("allowed-tools is not a space-delimited string")
    if not "\n".join(lines[end + 1:]).strip():
        problems.append("no instructions after the frontmatter")
    return problems
