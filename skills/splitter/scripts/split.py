#!/usr/bin/env python3
"""Split a review into one subtask per Python file: the largest MAX files under PATH.

Usage: split.py PATH [MAX]

Under agentctl the report goes to ``$AGENTCTL_OUTPUT``; elsewhere it is printed. Standard
library only, read-only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", "state"}


def python_files(root: Path) -> list[tuple[int, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                p = Path(dirpath, name)
                try:
                    out.append((p.stat().st_size, str(p)))
                except OSError:
                    continue
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    if not root.is_dir():
        print(f"split.py: {root} is not a directory", file=sys.stderr)
        return 2
    files = sorted(python_files(root), key=lambda f: (-f[0], f[1]))[:limit]
    subtasks, names = [], set()
    for _size, path in sorted(files, key=lambda f: f[1]):
        rel = os.path.relpath(path, root).lower().removesuffix(".py")  # short, unique names
        name = re.sub(r"[^a-z0-9]+", "-", rel).strip("-")[:48].strip("-") or "file"
        while name in names:
            name += "-x"
        names.add(name)
        subtasks.append({"name": name, "path": path})
    report = {"status": "COMPLETE",
              "summary": f"{len(subtasks)} file(s) to inspect under {root}",
              "output": {"subtasks": subtasks}}
    out = os.environ.get("AGENTCTL_OUTPUT")
    if out:
        with open(out, "w") as f:
            json.dump(report, f)
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
