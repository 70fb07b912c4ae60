"""Keep secrets out of everything agentctl writes: the WAL, logs, reports, error messages.

Two nets: by value (the values of environment variables whose names say they are secret,
e.g. ``OPENAI_API_KEY``) and by pattern (well-known key shapes, bearer tokens), so a key that
reached a process some other way is still caught.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
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
# Text that every match of a pattern above contains: a line holding none of them (and no
# secret value) cannot match, which a substring search tells ~20x faster than the regex.
PATTERN_HINTS = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AKIA", "AIza", "hf_", "earer ")


class Redactor:
    def __init__(self, values: list[str]) -> None:
        vals = sorted({v for v in values if len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)
        alts = [re.escape(v) for v in vals] + PATTERNS
        self._re = re.compile("|".join(f"(?:{a})" for a in alts))
        self._text_hints = (*vals, *PATTERN_HINTS)  # a match holds one of them
        # In JSON text a value holding `"`, `\\` or a control character appears escaped
        # (and, from an ASCII-only encoder, with \\uXXXX for the rest): those forms are what
        # to look for. Never the raw value: one holding `","` would match across members.
        forms = {f for v in vals for f in (json.dumps(v, ensure_ascii=False)[1:-1],
                                           json.dumps(v)[1:-1])}
        self._json_forms = tuple(sorted(forms, key=len, reverse=True))
        self._json_re = re.compile("|".join(f"(?:{a})" for a in
                                            [re.escape(f) for f in self._json_forms] + PATTERNS))
        self._hints = self._json_forms + PATTERN_HINTS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        return cls([v for k, v in env.items() if SECRET_NAME.search(k)])

    def text(self, s: str) -> str:
        """Secrets masked in ``s``. A text holding no secret value and no key shape's fixed
        part is returned as it is, told by substring tests (~20x faster than the regex)."""
        if not any(h in s for h in self._text_hints):
            return s
        return self._re.sub(MASK, s)

    def json_text(self, s: str) -> str:
        """Secrets masked in JSON text (a WAL line, a JSON file), in one pass over the text
        rather than a walk of the object: the mask replaces characters inside a string and
        never a quote or a backslash (no pattern matches one), so the text stays valid JSON.
        Returns ``s`` itself when there is nothing to mask."""
        if not any(h in s for h in self._hints):
            return s
        return self._json_re.sub(MASK, s)

    def encoded(self, text: str, value: Any, dumps: Callable[[Any], str]) -> tuple[str, Any]:
        """``text`` (``dumps(value)``) with secrets masked, and the value it now holds:
        ``(text, value)`` themselves when there is nothing to mask. Masked on the text in
        one pass (``json_text``); should a mask land outside a string (a secret's digits
        inside a number), the value's strings one by one instead."""
        clean = self.json_text(text)
        if clean is text:
            return text, value
        try:
            return clean, json.loads(clean)
        except ValueError:
            masked = self.obj(value)
            return dumps(masked), masked

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
