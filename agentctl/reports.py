"""The agent report (the handoff contract): validated before anything downstream sees it."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agentctl.models import Report

# id(schema) -> (the schema, its validator): the scheduler and the llm runner validate every
# report against the same few schemas. The schema is kept, so its id is not reused while the
# entry lives (and a validator reads its schema as it validates, not a copy made when built).
_validators: dict[int, tuple[dict[str, Any], Any]] = {}
_VALIDATORS_MAX = 256


def _validator(schema: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator for ``schema``, built once per schema object."""
    entry = _validators.get(id(schema))
    if entry is None or entry[0] is not schema:
        import jsonschema

        if len(_validators) >= _VALIDATORS_MAX:
            _validators.clear()
        entry = _validators[id(schema)] = (schema, jsonschema.Draft202012Validator(schema))
    return entry[1]


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
        errors = sorted(_validator(output_schema).iter_errors(report.output),
                        key=lambda e: list(e.absolute_path))
        if errors:
            out = []
            for err in errors[:20]:
                path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
                out.append(f"output{path}: {err.message}")
            return None, out
    return report.model_dump(), []
