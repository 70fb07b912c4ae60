"""litellm, and a model call made through it: the only module that imports litellm.

It runs in the model host process (``agentctl.runners.modelhost``); with
``AGENTCTL_MODEL_HOST=0``, or where the driver may use one CPU only, in the driver. Before the
import it sets ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no price map from the internet),
``LITELLM_MODE=PRODUCTION`` (no ``.env`` from parent folders) and ``HF_HUB_OFFLINE=1`` (no 23 s
of retries to huggingface.co when counting tokens), unless the user set them; after it,
litellm's banner is turned off and the ``offline/...`` provider (``agentctl.offline``) is
registered.

What crosses to the llm runner is plain JSON, the same in both places:

- ``call(kwargs)``: ``litellm.acompletion(**kwargs)``. Answered with the reply (``content``,
  ``model``, ``finish_reason``, ``usage``, ``cost``, ``cost_known``), or with ``failure``: what
  kind (``rate_limit``, ``timeout``, ``authentication``, ...), whether trying again can help,
  a one-line message with secrets masked, and the server's ``Retry-After``.
- ``info(model, api_base)``: whether to ask for JSON (``response_format``), and what the
  environment lacks for that model (a missing key, a provider litellm cannot place).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import threading
from typing import Any

from agentctl import offline, redact

LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_MODE": "PRODUCTION",
    "HF_HUB_OFFLINE": "1",
}

_lock = threading.Lock()
_litellm: Any = None


def set_env() -> None:
    for key, value in LITELLM_ENV.items():
        os.environ.setdefault(key, value)


def load() -> Any:
    """litellm, imported and set up once per process (thread-safe)."""
    global _litellm
    with _lock:
        if _litellm is None:
            set_env()
            # litellm's ~300,000 objects live as long as the process. No collection while
            # they are made (each would walk them all: several, during the import alone),
            # and then out of the collector's sight (7 full collections took 0.5 s of a
            # 1,000-task offline run).
            collecting = gc.isenabled()
            gc.disable()
            try:
                import litellm

                litellm.suppress_debug_info = True
                offline.register(litellm)
            finally:
                gc.freeze()
                if collecting:
                    gc.enable()
            _litellm = litellm
    return _litellm


async def aclose() -> None:
    """Release what litellm keeps bound to the running event loop: its HTTP clients (else
    their sockets are reported unclosed when the loop is gone) and its logging worker (else
    its queued coroutines are carried over to the next loop, or never awaited)."""
    if _litellm is None:
        return
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    from litellm.llms.custom_httpx.async_client_cleanup import (
        close_litellm_async_clients,
    )

    await asyncio.sleep(0)  # let finished calls enqueue their logging coroutines
    with contextlib.suppress(Exception):  # best effort: litellm's logging is not ours
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout=5)
    await GLOBAL_LOGGING_WORKER.stop()
    await close_litellm_async_clients()  # type: ignore[no-untyped-call]
    _litellm.in_memory_llm_clients_cache.flush_cache()


class LitellmClient:
    """Model calls through litellm in this process."""

    def __init__(self) -> None:
        self._formats: dict[str, dict[str, Any] | None] = {}

    def start(self) -> None:
        """Import litellm in a background thread, so its seconds overlap the run's start."""
        if _litellm is not None:
            return
        set_env()  # before the thread starts: os.environ is not for threads to race on
        # Not a daemon: a run that ends before the import does (its llm tasks all skipped)
        # waits for it at exit, rather than leave a thread mid-import to interpreter shutdown.
        threading.Thread(target=load, name="agentctl-import-litellm", daemon=False).start()

    def is_ready(self) -> bool:
        return _litellm is not None

    async def ready(self) -> None:
        await self._litellm()

    async def _litellm(self) -> Any:
        # The first call waits for the import (seconds) off the event loop's thread, so the
        # loop goes on meanwhile (the llm runner beats while a call is out).
        return _litellm if _litellm is not None else await asyncio.to_thread(load)

    async def call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        litellm = await self._litellm()
        model = str(kwargs.get("model") or "")
        if model.startswith(offline.PROVIDER + "/"):
            offline.price(litellm, model)
        try:
            resp = await litellm.acompletion(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return {"failure": classify(litellm, e)}
        choice = resp.choices[0] if resp.choices else None
        usage = getattr(resp, "usage", None)
        prompt_t = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_t = int(getattr(usage, "completion_tokens", 0) or 0)
        tokens = int(getattr(usage, "total_tokens", 0) or (prompt_t + completion_t))
        cost, cost_known = _cost(litellm, resp)
        return {"content": (choice.message.content or "") if choice else "",
                "model": getattr(resp, "model", None),
                "finish_reason": choice.finish_reason if choice else None,
                "usage": {"prompt_tokens": prompt_t, "completion_tokens": completion_t,
                          "total_tokens": tokens},
                "cost": cost, "cost_known": cost_known}

    async def info(self, model: str, api_base: str | None) -> dict[str, Any]:
        return self.info_now(await self._litellm(), model, api_base)

    def info_sync(self, model: str, api_base: str | None) -> dict[str, Any]:
        return self.info_now(load(), model, api_base)

    def info_now(self, litellm: Any, model: str, api_base: str | None) -> dict[str, Any]:
        return {"response_format": self._response_format(litellm, model),
                "problem": environment_problem(litellm, model, api_base)}

    def _response_format(self, litellm: Any, model: str) -> dict[str, Any] | None:
        """JSON mode where litellm says the model supports ``response_format``. Only the plain
        ``json_object`` kind: a schema would make some providers go through tool calls."""
        if model not in self._formats:
            self._formats[model] = _response_format(litellm, model)
        return self._formats[model]

    async def aclose(self) -> None:
        await aclose()


def _response_format(litellm: Any, model: str) -> dict[str, Any] | None:
    if model.startswith(offline.PROVIDER + "/"):
        return {"type": "json_object"}
    try:
        _, provider, _, _ = litellm.get_llm_provider(model)
        params = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:  # an unknown model: ask in the prompt only
        return None
    return {"type": "json_object"} if params and "response_format" in params else None


def environment_problem(litellm: Any, model: str, api_base: str | None) -> str | None:
    """What this process's environment lacks to call ``model``, in one line, or None."""
    if model.startswith(offline.PROVIDER + "/"):
        return None
    try:
        litellm.get_llm_provider(model)
    except Exception:
        return (f"model '{model}': litellm cannot tell its provider; write it as "
                "provider/model (e.g. openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest)")
    env = litellm.validate_environment(model, api_base=api_base)
    missing = [k for k in env.get("missing_keys") or [] if not os.environ.get(k)]
    if env.get("keys_in_environment") or not missing:
        return None
    names = " or ".join(missing)
    return f"model '{model}' needs {names}, which is not set in the environment"


def _cost(litellm: Any, resp: Any) -> tuple[float, bool]:
    """USD of one response, by litellm's ``completion_cost``: litellm already ran it for its
    own logging (``response_cost`` in the hidden params); ask again only when it is absent."""
    hidden = getattr(resp, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if not isinstance(cost, int | float):
        try:
            cost = litellm.completion_cost(completion_response=resp)
        except Exception:  # a model litellm has no price for
            return 0.0, False
    return round(float(cost), 12), True


def failure(kind: str, retryable: bool, message: str,
            retry_after: float | None = None) -> dict[str, Any]:
    """A failed call, as it crosses to the llm runner (``{"failure": failure(...)}``)."""
    return {"kind": kind, "retryable": retryable, "message": message, "retry_after": retry_after}


def classify(litellm: Any, e: Exception) -> dict[str, Any]:
    """litellm's exception -> what kind of failure, and whether trying again can help."""
    ex = litellm.exceptions
    status = getattr(e, "status_code", None)
    text = _short(e)
    if isinstance(e, ex.Timeout):
        return failure("timeout", True, f"timed out: {text}")
    if isinstance(e, ex.RateLimitError):
        return failure("rate_limit", True, f"rate limited (429): {text}", _retry_after(e))
    if isinstance(e, ex.ContextWindowExceededError) or (
            isinstance(e, ex.BadRequestError) and re.search(r"context.(length|window)", str(e), re.I)):
        return failure("context_window", False, f"context window exceeded: {text}")
    if isinstance(e, ex.AuthenticationError):
        return failure("authentication", False, f"authentication failed (401): {text}")
    if isinstance(e, ex.PermissionDeniedError):
        return failure("permission", False, f"permission denied (403): {text}")
    if isinstance(e, ex.NotFoundError):
        return failure("not_found", False, f"model not found (404): {text}")
    if isinstance(e, ex.ContentPolicyViolationError):
        return failure("content_policy", False, f"refused by content policy: {text}")
    if isinstance(e, ex.BadRequestError | ex.UnprocessableEntityError):
        return failure("bad_request", False, f"bad request ({status or 400}): {text}")
    if isinstance(e, ex.APIConnectionError):
        return failure("connection", True, f"connection error: {text}")
    if (isinstance(status, int) and status >= 500) or isinstance(
            e, ex.InternalServerError | ex.ServiceUnavailableError | ex.BadGatewayError):
        return failure("server_error", True, f"server error ({status}): {text}", _retry_after(e))
    if status == 429:
        return failure("rate_limit", True, f"rate limited (429): {text}", _retry_after(e))
    if isinstance(e, ex.APIError | ex.APIResponseValidationError) and status is None:
        return failure("server_error", True, f"bad response: {text}")
    return failure("unexpected", False, f"{type(e).__name__}: {text}")


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^litellm\.\w+: (\w+: )?", "", text)
    text = redact.default().text(text)
    return text if len(text) <= 300 else text[:297] + "..."


def _retry_after(e: Exception) -> float | None:
    headers = getattr(e, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(e, "response", None), "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
