"""The ``llm`` runner: a model call through litellm. (Built by the LLM issue.)"""

from __future__ import annotations

from agentctl.errors import RunnerError
from agentctl.runners.base import Attempt, Outcome


class LLMRunner:
    async def run(self, attempt: Attempt) -> Outcome:
        raise RunnerError("provider_error", "the llm runner is not available yet")
