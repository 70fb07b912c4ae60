#!/usr/bin/env python3
"""Inspect one Python file, read-only: size, functions, undocumented names, TODOs, the
longest function.

Usage: inspect_file.py FILE

Under agentctl the report goes to ``$AGENTCTL_OUTPUT``; elsewhere it is printed. Standard
library only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys

TODO = re.compile(r"#.*\b(TODO|FIXME|XXX)\b")


def inspect(path: str) -> dict[str, object]:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    tree = ast.parse(text, filename=path)
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    undocumented = []  # public module-level functions and classes, and their methods
    for n in tree.body:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            members = [(n.name, n)]
            if isinstance(n, ast.ClassDef):
                members += [(f"{n.name}.{m.name}", m) for m in n.body
                            if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
            undocumented += [name for name, m in members if not m.name.startswith("_")
                             and ast.get_docstring(m) is None]
    longest = max(funcs, key=lambda n: ((n.end_lineno or n.lineno) - n.lineno, n.name), default=None)
    return {
        "path": path,
        "lines": len(text.splitlines()),
        "functions": len(funcs),
        "classes": len(classes),
        "undocumented": undocumented,
        "todos": sum(1 for line in text.splitlines() if TODO.search(line)),
        "longest": None if longest is None else {
            "name": longest.name, "lines": (longest.end_lineno or longest.lineno) - longest.lineno + 1},
    }


def main() -> int:
    path = sys.argv[1]
    try:
        facts = inspect(path)
    except (OSError, SyntaxError, ValueError) as e:
        print(f"inspect_file.py: {path}: {e}", file=sys.stderr)
        return 2
    report = {"status": "COMPLETE",
              "summary": f"{path}: {facts['lines']} lines, {facts['functions']} functions, "
                         f"{len(facts['undocumented'])} undocumented",  # type: ignore[arg-type]
              "output": facts}
    out = os.environ.get("AGENTCTL_OUTPUT")
    if out:
        with open(out, "w") as f:
            json.dump(report, f)
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
