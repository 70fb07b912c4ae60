"""Keep secrets out of everything agentctl writes: the WAL, logs, reports, error messages.

Two nets: by value (the values of environment variables whose names say they are secret,
e.g. ``OPENAI_API_KEY``) and by pattern (well-known key shapes, bearer tokens), so a key that
reached a process some other way is still caught.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "[REDACTED]"
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE)", re.I)
MIN_SECRET_LEN = 8
PATTERNS = [
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}",   # OpenAI, Anthropic
    r"gh[pousr]_[A-Za-z0-9]{20,}",              # GitHub
    r"github_pat_[A-Za-z0-9_]{20,}",
    r"xox[abprs]-[A-Za-z0-9\-]{10,}",           # Slack
    r"AKIA[0-9A-Z]{16}",                        # AWS access key id
    r"AIza[0-9A-Za-z_\-]{30,}",                 # Google
    r"hf_[A-Za-z0-9]{20,}",                     # Hugging Face
    r"(?<=[Bb]earer )[A-Za-z0-9._~+/=\-]{12,}",
]


class Redactor:
    def __init__(self, values: list[str]) -> None:
        vals = sorted({v for v in values if len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)
        alts = [re.escape(v) for v in vals] + PATTERNS
        self._re = re.compile("|".join(f"(?:{a})" for a in alts))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        return cls([v for k, v in env.items() if SECRET_NAME.search(k)])

    def text(self, s: str) -> str:
        return self._re.sub(MASK, s)

    def obj(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.obj(v) for v in value]
        if isinstance(value, dict):
            return {k: self.obj(v) for k, v in value.items()}
        return value


_default: Redactor | None = None


def default() -> Redactor:
    """The redactor for this process's environment (built once)."""
    global _default
    if _default is None:
        _default = Redactor.from_environ()
    return _default


def reset() -> None:
    global _default
    _default = None
