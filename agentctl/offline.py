"""The built-in model provider ``offline/...``: answers like a model, with no network and no key.

It is registered with litellm as a custom provider (``litellm.custom_provider_map``) and given
a price (``litellm.register_model``), so a call to it goes through the same litellm code path,
usage and ``completion_cost`` as a call to a real model. The bundled example and the tests
run on it.

Model strings::

    offline/<name>[?option=value&option=value...]

The name is free (``echo``, ``slow``, ``flaky``: it only shows in summaries). Options:

``latency=DURATION``
    every reply takes this long (``200ms``, ``2s``); default 0.
``fail=KIND[xN][,KIND[xN]...]``
    scripted failures. ``N`` is a count (default 1) or ``*`` (always). KIND is one of
    ``429``, ``500``, ``503``, ``timeout``, ``401``, ``400``, ``context`` -- the first N
    *tries* of every call fail with that error (a try is the runner's retry of one
    request to one model) -- or ``json`` (a reply that is not JSON) and ``schema`` (a
    report that breaks the schema) -- the first N *turns* of every attempt are bad (a turn
    is the first request, then each repair the runner asks for).
``attempts=K``
    scripted failures only in the first K attempts of a task (default: in every attempt).
``status=blocked|failed``
    answer with that status instead of COMPLETE.

Failures are keyed on what is in the request, not on a counter: the llm runner sends
``metadata={"agentctl": {"task", "attempt", "turn", "try"}}`` with every call, so the same
pipeline gives the same sequence of failures in any process, before and after a resume.
(A call without that metadata counts as attempt 1, turn 0, try 0.)

The reply is a report that validates against the contract in the user message (the report
schema with the skill's output schema inside): its ``output`` is a minimal instance built from
that schema by ``minimal_instance``. Token counts are litellm's own (``token_counter``, which
works offline); the price is ``PRICE_IN`` / ``PRICE_OUT`` per token.

This module never imports litellm itself: ``register`` is handed the module by the llm runner,
the only module that imports it. The rest is pure and also serves the tests' fake server.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

PROVIDER = "offline"
PRICE_IN = 1e-6  # USD per input token ($1 per million)
PRICE_OUT = 2e-6  # USD per output token ($2 per million)

TRY_KINDS = {"429": 429, "500": 500, "503": 503, "timeout": 408, "401": 401, "400": 400,
             "context": 400}
TURN_KINDS = ("json", "schema")
ALWAYS = 1 << 30

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?")


class OfflineSpecError(ValueError):
    """A model string the offline provider does not understand (one line, for the user)."""


@dataclass(frozen=True)
class OfflineSpec:
    name: str
    latency_s: float = 0.0
    fails: tuple[tuple[str, int], ...] = ()
    attempts: int | None = None
    status: str = "COMPLETE"
    options: dict[str, str] = field(default_factory=dict)

    def failure(self, attempt: int, turn: int, try_: int) -> str | None:
        """The scripted failure for this call, if any: a KIND of ``fail=``."""
        if self.attempts is not None and attempt > self.attempts:
            return None
        for kind, n in self.fails:
            count = turn if kind in TURN_KINDS else try_
            if count < n:
                return kind
        return None


def parse(model: str) -> OfflineSpec:
    """``offline/name?opts`` (or ``name?opts``, as litellm hands it to the provider)."""
    rest = model.split("/", 1)[1] if model.startswith(PROVIDER + "/") else model
    name, _, query = rest.partition("?")
    if not name:
        raise OfflineSpecError(f"'{model}': name the offline model, e.g. offline/echo")
    opts = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    latency = 0.0
    fails: list[tuple[str, int]] = []
    attempts = None
    status = "COMPLETE"
    for key, value in opts.items():
        if key == "latency":
            m = _DURATION.fullmatch(value.strip())
            if not m:
                raise OfflineSpecError(f"'{model}': latency={value} is not a duration (e.g. 200ms, 2s)")
            latency = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
        elif key == "fail":
            for part in filter(None, value.split(",")):
                kind, count = _kind_count(part)
                if kind is None:
                    known = ", ".join([*TRY_KINDS, *TURN_KINDS])
                    raise OfflineSpecError(f"'{model}': fail={part}: unknown kind "
                                           f"'{part.split('x')[0]}' (known: {known})")
                if count == "*":
                    n = ALWAYS
                elif count == "":
                    n = 1
                elif count.isdigit():
                    n = int(count)
                else:
                    raise OfflineSpecError(f"'{model}': fail={part}: the count after 'x' must be a number or *")
                fails.append((kind, n))
        elif key == "attempts":
            if not value.isdigit():
                raise OfflineSpecError(f"'{model}': attempts={value} must be a number")
            attempts = int(value)
        elif key == "status":
            if value.lower() not in ("complete", "blocked", "failed"):
                raise OfflineSpecError(f"'{model}': status={value} must be complete, blocked or failed")
            status = value.upper()
        else:
            raise OfflineSpecError(f"'{model}': unknown option '{key}' "
                                   "(known: latency, fail, attempts, status)")
    return OfflineSpec(name, latency, tuple(fails), attempts, status, opts)


def _kind_count(part: str) -> tuple[str | None, str]:
    """``contextx2`` -> ("context", "2"); ``json`` -> ("json", "")."""
    for kind in [*TRY_KINDS, *TURN_KINDS]:
        if part == kind:
            return kind, ""
        if part.startswith(kind + "x"):
            return kind, part[len(kind) + 1:]
    return None, ""


# --------------------------------------------------------------------------- the reply


def _json_blocks(text: str) -> list[Any]:
    out = []
    for m in re.finditer(r"```json\s*\n(.*?)\n```", text, re.S):
        try:
            out.append(json.loads(m.group(1)))
        except ValueError:
            continue
    return out


def read_request(messages: list[dict[str, Any]],
                 response_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the runner's prompt says: task id, inputs, needed reports, and the report contract."""
    first_user = next((m for m in messages if m.get("role") == "user"), None)
    text = _content_text(first_user.get("content")) if first_user else ""
    task = re.search(r"Task `([^`]+)`", text)
    found: dict[str, Any] = {"task": task.group(1) if task else None, "with": {}, "needs": {},
                             "contract": None}
    for block in _json_blocks(text):
        if isinstance(block, dict) and "with" in block and "needs" in block:
            found["with"], found["needs"] = block["with"], block["needs"]
        elif isinstance(block, dict) and "status" in block.get("properties", {}):
            found["contract"] = block
    if found["contract"] is None and response_format and response_format.get("type") == "json_schema":
        found["contract"] = (response_format.get("json_schema") or {}).get("schema")
    return found


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def report_for(messages: list[dict[str, Any]], *, name: str = "echo", status: str = "COMPLETE",
               response_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """A report that validates against the contract the prompt carries."""
    req = read_request(messages, response_format)
    contract = req["contract"] or {}
    out_schema = contract.get("properties", {}).get("output")
    task = req["task"] or "the task"
    inputs = ", ".join(sorted(req["with"])) or "none"
    needs = ", ".join(sorted(req["needs"])) or "none"
    report: dict[str, Any] = {
        "status": status,
        "summary": f"offline/{name} answered task `{task}` (inputs: {inputs}; reports read: {needs}).",
        "deliverables": [],
        "blockers": [f"offline/{name} was told to answer {status}"] if status == "BLOCKED" else [],
        "next": None,
    }
    if out_schema is not None or "output" in contract.get("required", []):
        report["output"] = minimal_instance(out_schema or {}, out_schema or {})
    return report


def broken_report(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A report that breaks the contract: no summary, and an output of the wrong shape."""
    contract = read_request(messages)["contract"] or {}
    out_schema = contract.get("properties", {}).get("output") or {}
    wrong: Any = [] if out_schema.get("type") == "object" else {"unexpected": True}
    return {"status": "COMPLETE", "output": wrong}


# --------------------------------------------------------------------------- JSON Schema -> instance


def minimal_instance(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A small instance that validates against ``schema`` for the schemas agents' contracts
    use: objects with their required properties, arrays with one item (or ``minItems``),
    the first of an ``enum``, ``const``, strings and numbers within simple bounds, local
    ``$ref``, ``allOf``/``anyOf``/``oneOf``. ``pattern`` is not solved."""
    root = schema if root is None else root
    if depth > 32 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return minimal_instance(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    if schema.get("examples"):
        return schema["examples"][0]
    if "allOf" in schema:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            merged = _merge(merged, part)
        return minimal_instance(merged, root, depth + 1)
    for key in ("oneOf", "anyOf"):
        if schema.get(key):
            branch = schema[key][0]
            rest = {k: v for k, v in schema.items() if k != key}
            return minimal_instance(_merge(rest, branch) if rest else branch, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        if "properties" in schema or "required" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
        else:
            return None
    if kind == "object":
        props = schema.get("properties", {})
        out: dict[str, Any] = {}
        for name in schema.get("required", []):
            out[name] = minimal_instance(props.get(name, {}), root, depth + 1)
        return out
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        items = [minimal_instance(s, root, depth + 1) for s in prefix]
        n = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            n = min(n, int(schema["maxItems"]))
        item_schema = schema.get("items", {})
        i = len(items)
        while len(items) < n and item_schema is not False:
            item = minimal_instance(item_schema, root, depth + 1)
            if schema.get("uniqueItems") and isinstance(item, str):
                item = f"{item}{i}" if item in items else item
            items.append(item)
            i += 1
        return items
    if kind == "string":
        return _string(schema)
    if kind in ("number", "integer"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    return None


def _resolve(ref: str, root: Any) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def _merge(a: dict[str, Any], b: Any) -> dict[str, Any]:
    if not isinstance(b, dict):
        return a
    out = {**a, **{k: v for k, v in b.items() if k not in ("properties", "required")}}
    if "properties" in a or "properties" in b:
        out["properties"] = {**a.get("properties", {}), **b.get("properties", {})}
    if "required" in a or "required" in b:
        out["required"] = list(dict.fromkeys([*a.get("required", []), *b.get("required", [])]))
    return out


_FORMATS = {"date-time": "2025-01-01T00:00:00Z", "date": "2025-01-01", "time": "00:00:00Z",
            "email": "agent@example.com", "uri": "https://example.com/", "uuid":
            "00000000-0000-4000-8000-000000000000", "hostname": "example.com", "ipv4": "127.0.0.1"}


def _string(schema: dict[str, Any]) -> str:
    s = _FORMATS.get(schema.get("format", ""), "example")
    lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(s) < lo:
        s += "x" * (lo - len(s))
    if hi is not None and len(s) > int(hi):
        s = s[: int(hi)]
    return s


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    lo = schema.get("minimum")
    xlo = schema.get("exclusiveMinimum")
    hi = schema.get("maximum")
    xhi = schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")
    value: float = 0
    if lo is not None:
        value = lo
    if xlo is not None and value <= xlo:
        value = xlo + (step or 1 if integer else step or 0.5)
    if hi is not None and value > hi:
        value = hi
    if xhi is not None and value >= xhi:
        value = xhi - (1 if integer else 0.5)
    if step:
        value = -(-value // step) * step  # round up to a multiple
    if integer:
        return math.ceil(value)
    return value


# --------------------------------------------------------------------------- litellm glue


_registered: set[str] = set()


def register(litellm: Any) -> None:
    """Register the provider with litellm (once per process)."""
    if any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        return
    from litellm.llms.custom_llm import CustomLLM

    class OfflineLLM(CustomLLM):
        async def acompletion(self, model: str, messages: list[dict[str, Any]], *args: Any,
                              **kwargs: Any) -> Any:
            return await _acompletion(litellm, model, messages, **kwargs)

        def completion(self, model: str, messages: list[dict[str, Any]], *args: Any,
                       **kwargs: Any) -> Any:
            return asyncio.run(_acompletion(litellm, model, messages, **kwargs))

    litellm.custom_provider_map = [*litellm.custom_provider_map,
                                   {"provider": PROVIDER, "custom_handler": OfflineLLM()}]


def price(litellm: Any, model: str) -> None:
    """Give ``model`` (a full offline model string) its price, so ``completion_cost`` knows it."""
    if model in _registered:
        return
    litellm.register_model({model: {
        "litellm_provider": PROVIDER, "mode": "chat", "max_tokens": 1_000_000,
        "max_input_tokens": 1_000_000, "max_output_tokens": 100_000,
        "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT,
        # Stated (as free) so that litellm does not warn that it has to assume them.
        "cache_creation_input_token_cost": 0.0, "cache_read_input_token_cost": 0.0,
    }})
    _registered.add(model)


async def _acompletion(litellm: Any, model: str, messages: list[dict[str, Any]],
                       **kwargs: Any) -> Any:
    from litellm.llms.custom_llm import CustomLLMError
    from litellm.types.utils import Usage

    try:
        spec = parse(model)
    except OfflineSpecError as e:
        raise CustomLLMError(  # type: ignore[no-untyped-call]
            status_code=400, message=str(e)) from None
    lp = kwargs.get("litellm_params") or {}
    meta = ((lp.get("metadata") or {}).get("agentctl")) or {}
    optional = kwargs.get("optional_params") or {}
    timeout = kwargs.get("timeout")
    timeout_s = timeout if isinstance(timeout, int | float) else None
    latency = spec.latency_s
    if timeout_s is not None and latency > timeout_s:
        await asyncio.sleep(timeout_s)
        raise CustomLLMError(  # type: ignore[no-untyped-call]
            status_code=408, message=f"offline/{spec.name}: no reply within {timeout_s:g}s")
    if latency:
        await asyncio.sleep(latency)
    kind = spec.failure(int(meta.get("attempt", 1)), int(meta.get("turn", 0)), int(meta.get("try", 0)))
    if kind in TRY_KINDS:
        raise CustomLLMError(  # type: ignore[no-untyped-call]
            status_code=TRY_KINDS[kind], message=_FAIL_TEXT[kind].format(name=spec.name))
    if kind == "json":
        content = "Sure! Here is my report: {status: COMPLETE, summary: done"
    elif kind == "schema":
        content = json.dumps(broken_report(messages))
    else:
        report = report_for(messages, name=spec.name, status=spec.status,
                            response_format=optional.get("response_format"))
        content = json.dumps(report, ensure_ascii=False)
    response = kwargs["model_response"]
    response.choices[0].message.content = content
    response.choices[0].finish_reason = "stop"
    response.model = f"{PROVIDER}/{model}"
    prompt_tokens = litellm.token_counter(model=PROVIDER + "/" + spec.name, messages=messages)
    completion_tokens = litellm.token_counter(model=PROVIDER + "/" + spec.name, text=content,
                                              count_response_tokens=True)
    response.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           total_tokens=prompt_tokens + completion_tokens)
    return response


_FAIL_TEXT = {
    "429": "offline/{name}: rate limit reached (scripted)",
    "500": "offline/{name}: internal server error (scripted)",
    "503": "offline/{name}: service unavailable (scripted)",
    "timeout": "offline/{name}: request timed out (scripted)",
    "401": "offline/{name}: invalid API key (scripted)",
    "400": "offline/{name}: bad request (scripted)",
    "context": ("offline/{name}: this model's maximum context length is 8192 tokens; "
                "your messages resulted in more (context_length_exceeded, scripted)"),
}
