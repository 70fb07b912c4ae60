#!/usr/bin/env python3
"""The maker of the review loop: a summary of the inspection reports, revised on feedback.

Usage: draft.py   (under agentctl: reads $AGENTCTL_INPUT, writes $AGENTCTL_OUTPUT)

Iteration 1 is a short first draft (totals and the three largest files). Each later
iteration starts from the previous draft (``loop.previous``) and fixes what the checker's
report (``loop.feedback``) lists: files ``missing`` from the summary, risks ``unflagged``.
Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

FIRST_DRAFT_FILES = 3


def line(facts: dict[str, Any]) -> str:
    longest = facts.get("longest")
    bits = [f"{facts['lines']} lines", f"{facts['functions']} functions"]
    if longest:
        bits.append(f"longest `{longest['name']}` ({longest['lines']} lines)")
    bits.append(f"{len(facts['undocumented'])} undocumented")
    if facts["todos"]:
        bits.append(f"{facts['todos']} TODO(s)")
    return f"- `{facts['path']}`: " + ", ".join(bits)


def render(files: list[dict[str, Any]], covered: list[str], risks: list[dict[str, str]]) -> str:
    lines = sum(f["lines"] for f in files)
    funcs = sum(f["functions"] for f in files)
    out = [f"# Review of {len(files)} file(s): {lines} lines, {funcs} functions", ""]
    out += [line(f) for f in files if f["path"] in covered]
    if len(covered) < len(files):
        out.append(f"- ... and {len(files) - len(covered)} smaller file(s)")
    if risks:
        out += ["", "## Risks", ""]
        out += [f"- `{r['path']}`: {r['why']}" for r in risks]
    return "\n".join(out) + "\n"


def main() -> int:
    with open(os.environ["AGENTCTL_INPUT"]) as f:
        packet = json.load(f)
    files = [r["output"] for r in packet["needs"]["inspect"]["output"]]
    loop = packet["loop"]
    feedback = (loop.get("feedback") or {}).get("output")
    previous = (loop.get("previous") or {}).get("output")
    if feedback is None or previous is None:
        largest = sorted(files, key=lambda f: (-f["lines"], f["path"]))[:FIRST_DRAFT_FILES]
        covered = [f["path"] for f in files if f in largest]
        risks: list[dict[str, str]] = []
        what = "first draft"
    else:
        covered = list(previous["covered"])
        covered += [p for p in feedback.get("missing", []) if p not in covered]
        covered = [f["path"] for f in files if f["path"] in covered]  # the reports' order
        risks = list(previous["risks"])
        risks += [r for r in feedback.get("unflagged", []) if r not in risks]
        what = (f"revision {loop['iteration']}: +{len(feedback.get('missing', []))} file(s), "
                f"+{len(feedback.get('unflagged', []))} risk(s)")
    output = {"text": render(files, covered, risks), "covered": covered, "risks": risks}
    with open(os.environ["AGENTCTL_OUTPUT"], "w") as f:
        json.dump({"status": "COMPLETE", "summary": f"{what}: covers {len(covered)} of "
                   f"{len(files)} file(s), {len(risks)} risk(s)", "output": output}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
