"""A fake OpenAI-compatible chat completions server on 127.0.0.1, for tests. Standard library only.

The tests reach it through litellm with an ``openai/<model>`` model whose ``api_base`` is
``server.url`` -- the real HTTP path: litellm, the OpenAI SDK, httpx, a socket.

What it answers is scripted per model name: ``server.script("gpt-4o-mini", Reply(status=429),
Reply(content="not json"))`` queues replies for that model; a model with nothing queued gets
a valid report built from the request's report contract (the same builder as the offline
provider). ``Reply(hold=True)`` is a slow reply: it waits until the test ends (or
``release()``), so a client timeout is certain without a timed assert. Every request is
recorded (``server.requests``), with its headers and JSON body.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentctl import offline


@dataclass
class Reply:
    status: int = 200
    content: str | dict[str, Any] | None = None  # None: a valid report for the request
    error: str | None = None  # the error message for a status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] = (120, 30)  # prompt, completion tokens
    hold: bool = False  # do not answer until released (a reply slower than any timeout)
    delay_s: float = 0.0


@dataclass
class Request:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]  # names in lower case
    at: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.echo_auth_in_errors = False  # like OpenAI's "Incorrect API key provided: sk-..."
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._handle(self)

            def do_GET(self) -> None:  # /v1/models, if anything asks
                self._send(200, {"object": "list", "data": []})

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                body = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                # The client may have given up (a timeout): nothing to answer then.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the test's side

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, model: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts.setdefault(model, []).extend(replies)

    def requests_for(self, model: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the server's side

    def _handle(self, h: Any) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            h._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        model = str(body.get("model", ""))
        with self._lock:
            headers = {k.lower(): v for k, v in h.headers.items()}
            self.requests.append(Request(model, body, headers, time.monotonic()))
            queue = self._scripts.get(model) or []
            reply = queue.pop(0) if queue else Reply()
        if reply.hold:
            self._released.wait()
        elif reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.status >= 400:
            msg = reply.error or f"scripted error {reply.status}"
            if self.echo_auth_in_errors:
                msg += f" (you sent: {h.headers.get('Authorization', '')})"
            kind = {429: "rate_limit_error", 401: "authentication_error"}.get(reply.status, "server_error")
            h._send(reply.status, {"error": {"message": msg, "type": kind, "code": None}}, reply.headers)
            return
        if reply.content is None:
            content = json.dumps(offline.report_for(body.get("messages", []), name=model,
                                                    response_format=body.get("response_format")))
        elif isinstance(reply.content, dict):
            content = json.dumps(reply.content)
        else:
            content = reply.content
        prompt, completion = reply.usage
        h._send(200, {
            "id": f"chatcmpl-fake-{len(self.requests)}", "object": "chat.completion",
            "created": 1700000000, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }, reply.headers)
