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
        "```json\n" + _contract(skill.output_schema if skill else None) + "\n```\n"
    )


# The report contract as the prompt shows it, per output schema: the same text in every
# prompt of a skill, and indent=2 is the JSON module's slow (pure Python) encoder. Keyed by
# the schema's compact text (the C encoder's, a few us), so a schema changed in place is not
# shown stale.
_contracts: dict[str, str] = {}
_CONTRACTS_MAX = 256


def _contract(output_schema: dict[str, Any] | None) -> str:
    key = json.dumps(output_schema)
    text = _contracts.get(key)
    if text is None:
        if len(_contracts) >= _CONTRACTS_MAX:
            _contracts.clear()
        text = _contracts[key] = json.dumps(report_schema(output_schema), indent=2)
    return text


def rendered_prompt(pkt: dict[str, Any], skill: Skill | None) -> str:
    """The whole prompt as one text, for command agents (stdin and $AGENTCTL_PROMPT)."""
    body = skill.body.strip() + "\n\n---\n\n" if skill else ""
    return body + user_message(pkt, skill)
