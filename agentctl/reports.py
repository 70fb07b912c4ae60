"""The agent report (the handoff contract): validated before anything downstream sees it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agentctl.models import Report


def validate_report(raw: Any, output_schema: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[str]]:
    """Return (the normalised report, []) or (None, the problems, one line each)."""
    if not isinstance(raw, dict):
        return None, ["the report must be a JSON object"]
    try:
        report = Report.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "report"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{loc}: {msg}")
        return None, problems
    if output_schema is not None and report.status == "COMPLETE":
        import jsonschema

        validator = jsonschema.Draft202012Validator(output_schema)
        errors = sorted(validator.iter_errors(report.output), key=lambda e: list(e.absolute_path))
        if errors:
            out = []
            for err in errors[:20]:
                path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
                out.append(f"output{path}: {err.message}")
            return None, out
    return report.model_dump(), []
