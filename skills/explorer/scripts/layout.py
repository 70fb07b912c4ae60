#!/usr/bin/env python3
"""Explore a directory's layout, read-only, and report what a planner needs to know.

Usage: layout.py [PATH]

Under agentctl (a ``command`` task) the report goes to ``$AGENTCTL_OUTPUT`` as JSON, with
``output.findings`` shaped like the explorer skill's ``assets/output.schema.json``; elsewhere
the findings are printed. Standard library only; nothing is written except that report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache",
             ".pytest_cache", ".ruff_cache", ".tox", "dist", "build", "state"}
MAX_ENTRIES = 50_000
LANGUAGES = {
    ".py": "Python", ".js": "JavaScript", ".ts": "TypeScript", ".tsx": "TypeScript", ".go": "Go",
    ".rs": "Rust", ".java": "Java", ".kt": "Kotlin", ".rb": "Ruby", ".c": "C", ".h": "C",
    ".cc": "C++", ".cpp": "C++", ".cs": "C#", ".php": "PHP", ".swift": "Swift", ".sh": "Shell",
    ".md": "Markdown", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML",
}
MANIFESTS = ("pyproject.toml", "setup.py", "package.json", "go.mod", "Cargo.toml", "pom.xml",
             "Gemfile", "Makefile", "Dockerfile")


class Beat:
    """Touch ``$AGENTCTL_HEARTBEAT`` now and then, so a long walk is not taken for a hang."""

    def __init__(self) -> None:
        self.path = os.environ.get("AGENTCTL_HEARTBEAT")
        self.last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if self.path and now - self.last >= 1.0:
            self.last = now
            try:
                Path(self.path).touch()
            except OSError:
                pass


def walk(root: Path, beat: Beat) -> tuple[list[tuple[Path, int]], bool]:
    """Every file under ``root`` with its size, skipping tool and build directories."""
    files: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath, name)
            try:
                size = p.lstat().st_size
            except OSError:
                continue
            files.append((p.relative_to(root), size))
            if len(files) >= MAX_ENTRIES:
                return files, True
        beat()
    return files, False


def findings_for(root: Path, files: list[tuple[Path, int]], truncated: bool) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    top = sorted({p.parts[0] + ("/" if len(p.parts) > 1 else "") for p, _ in files})
    more = f" (stopped counting at {MAX_ENTRIES} files)" if truncated else ""
    out.append({
        "title": f"{len(files)} files{more}, {len(top)} top-level entries",
        "detail": "Top level: " + (", ".join(top[:25]) or "nothing") + (" ..." if len(top) > 25 else ""),
    })

    langs = Counter(LANGUAGES.get(p.suffix.lower(), "") for p, _ in files)
    langs.pop("", None)
    if langs:
        out.append({
            "title": f"Mostly {langs.most_common(1)[0][0]}",
            "detail": "Files by language: " + ", ".join(f"{k} {v}" for k, v in langs.most_common(8)),
        })

    manifests = [m for m in MANIFESTS if (root / m).is_file()]
    readme = next((p for p, _ in files if len(p.parts) == 1 and p.name.lower().startswith("readme")), None)
    out.append({
        "title": "Project files: " + (", ".join(manifests) if manifests else "no build manifest found"),
        "detail": (f"README: {readme}" if readme else "No README at the top level") + "; "
                  + ("CI config found" if (root / ".github" / "workflows").is_dir() or (root / ".ci").is_dir()
                     else "no CI config found (.github/workflows or .ci)"),
    })

    tests = [p for p, _ in files if p.name.startswith("test_") or p.name.endswith(("_test.py", ".test.ts", ".test.js", "_test.go"))]
    sources = [p for p, _ in files if p.suffix in (".py", ".js", ".ts", ".go", ".rs", ".java") and p not in tests]
    out.append({
        "title": f"{len(tests)} test files for {len(sources)} source files",
        "detail": ("Test files, e.g. " + ", ".join(str(p) for p in tests[:5])) if tests
                  else "No test files found (test_*.py, *_test.py, *.test.ts, *_test.go ...)",
    })

    largest = sorted(files, key=lambda f: f[1], reverse=True)[:5]
    if largest:
        out.append({
            "title": f"Largest file: {largest[0][0]} ({largest[0][1] // 1024} KiB)",
            "detail": "Largest files: " + ", ".join(f"{p} ({s // 1024} KiB)" for p, s in largest),
        })
    for f in out:  # the schema allows 120 characters, and a path can be longer
        if len(f["title"]) > 120:
            f["title"] = f["title"][:117] + "..."
    return out


def write_report(report: dict[str, object]) -> None:
    """Write the report atomically: the runner never sees half a file."""
    target = Path(os.environ["AGENTCTL_OUTPUT"])
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".")
    if not root.is_dir():
        report: dict[str, object] = {
            "status": "BLOCKED", "summary": f"{root} is not a directory; nothing to explore.",
            "blockers": [f"path '{root}' does not exist or is not a directory"],
            "output": {"findings": []},
        }
        code = 1
    else:
        files, truncated = walk(root, Beat())
        findings = findings_for(root, files, truncated)
        report = {
            "status": "COMPLETE",
            "summary": f"Layout of {root}: " + "; ".join(f["title"] for f in findings) + ".",
            "output": {"findings": findings},
        }
        code = 0
    if os.environ.get("AGENTCTL_OUTPUT"):
        write_report(report)
    else:
        print(report["summary"])
        for f in report["output"]["findings"]:  # type: ignore[index]
            print(f"- {f['title']}: {f['detail']}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
