"""The exception tree of agentctl.

::

    AgentctlError                 base; ``exit_code`` says what the CLI exits with
    ├── DefinitionError           bad pipeline/skill files (exit 2); carries Diagnostics
    ├── UsageError                bad command-line use (exit 2)
    ├── StateError                a run's state cannot be used (exit 3)
    │   ├── CorruptLogError       the WAL is damaged in the middle
    │   └── RunNotFound           no such run
    ├── LockHeld                  another live process drives the run (exit 3)
    └── RunnerError               an attempt failed; carries a failure category

Outside exceptions (the OS's, PyYAML's, litellm's) are translated once, at the module that
talks to them, into one of these. The CLI is the one place that maps them to exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One compiler-style message: ``path:line:col: severity: message``."""

    path: str
    line: int | None
    col: int | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.severity}: {self.message}"


class AgentctlError(Exception):
    exit_code = 1


class DefinitionError(AgentctlError):
    exit_code = 2

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


class UsageError(AgentctlError):
    exit_code = 2


class StateError(AgentctlError):
    exit_code = 3


class CorruptLogError(StateError):
    pass


class RunNotFound(StateError):
    pass


class LockHeld(AgentctlError):
    exit_code = 3


class RunnerError(AgentctlError):
    """An attempt failed. ``category`` is one of the failure categories; ``retryable``
    says whether the task's retry policy may try again."""

    def __init__(self, category: str, message: str, *, retryable: bool = False) -> None:
        self.category = category
        self.message = message
        self.retryable = retryable
        super().__init__(message)
