#!/usr/bin/env python3
"""The checker of the review loop: a summary against the inspection reports.

Usage: check.py [LONG_FUNCTION_LINES] [UNDOCUMENTED]   (defaults 60 and 5)

Under agentctl: reads $AGENTCTL_INPUT (``loop.maker`` is the draft, ``needs.inspect`` the
reports), writes $AGENTCTL_OUTPUT. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def why_risky(facts: dict[str, Any], long_lines: int, undocumented: int) -> str | None:
    reasons = []
    if facts["todos"]:
        reasons.append(f"{facts['todos']} TODO(s)")
    if facts.get("longest") and facts["longest"]["lines"] > long_lines:
        reasons.append(f"`{facts['longest']['name']}` is {facts['longest']['lines']} lines long")
    if len(facts["undocumented"]) >= undocumented:
        reasons.append(f"{len(facts['undocumented'])} undocumented public names")
    return "; ".join(reasons) or None


def main() -> int:
    long_lines = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    undocumented = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with open(os.environ["AGENTCTL_INPUT"]) as f:
        packet = json.load(f)
    files = [r["output"] for r in packet["needs"]["inspect"]["output"]]
    draft = packet["loop"]["maker"]["output"]
    flagged = {r["path"] for r in draft["risks"]}
    missing = [f["path"] for f in files
               if f["path"] not in draft["covered"] or f"`{f['path']}`" not in draft["text"]]
    unflagged = []
    for f in files:
        why = why_risky(f, long_lines, undocumented)
        if why and f["path"] not in flagged:
            unflagged.append({"path": f["path"], "why": why})
    issues = [f"{p} has no line in the summary" for p in missing]
    issues += [f"{r['path']} is risky ({r['why']}) but not under Risks" for r in unflagged]
    verdict = "revise" if issues else "pass"
    with open(os.environ["AGENTCTL_OUTPUT"], "w") as f:
        json.dump({"status": "COMPLETE",
                   "summary": f"{verdict}: {len(missing)} file(s) missing, "
                              f"{len(unflagged)} risk(s) not called out",
                   "output": {"verdict": verdict, "issues": issues, "missing": missing,
                              "unflagged": unflagged}}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
