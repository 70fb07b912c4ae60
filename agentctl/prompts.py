"""The context packet and the prompt an agent receives. Pure."""

from __future__ import annotations

import json
from typing import Any

from agentctl.models import Skill, report_schema


def packet(run_id: str, task_id: str, attempt: int, with_: dict[str, Any],
           needs: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a task sees: its own inputs and the reports of the tasks it needs, nothing else."""
    out: dict[str, Any] = {
        "run_id": run_id,
        "task": task_id,
        "attempt": attempt,
        "with": with_,
        "needs": needs,
    }
    if extra:
        out.update(extra)
    return out


def user_message(pkt: dict[str, Any], skill: Skill | None) -> str:
    schema = report_schema(skill.output_schema if skill else None)
    return (
        "## Your task\n\n"
        f"Task `{pkt['task']}`. Its inputs and the reports of the tasks it needs:\n\n"
        "```json\n" + json.dumps({k: v for k, v in pkt.items()
                                  if k not in ("run_id", "task", "attempt")}, indent=2,
                                 ensure_ascii=False) + "\n```\n\n"
        "## Your report\n\n"
        "Reply with one JSON object, and nothing else, that validates against this schema. "
        "`status` is COMPLETE when you did the task, BLOCKED when something you need is "
        "missing (say what in `blockers`), FAILED when you could not do it.\n\n"
        "```json\n" + json.dumps(schema, indent=2) + "\n```\n"
    )


def rendered_prompt(pkt: dict[str, Any], skill: Skill | None) -> str:
    """The whole prompt as one text, for command agents (stdin and $AGENTCTL_PROMPT)."""
    body = skill.body.strip() + "\n\n---\n\n" if skill else ""
    return body + user_message(pkt, skill)
