"""``agentctl`` with a stand-in for litellm's call: for ``bench_engine.py`` only, never for a run
anyone keeps.

    python benchmarks/stand_in_model.py [--burn-ms MS] run PIPELINE --state-dir DIR

Runs agentctl's command line as ``python -m agentctl`` would, except that once litellm is
loaded its ``acompletion`` is replaced: the first call goes to litellm as usual, and every call
(that one too) returns a copy of that first response. With ``--burn-ms``, each call first spends
that much CPU in a busy loop, on the event loop's thread, as litellm's own work would.

What it is for: the llm runs' ratio mixes the engine's cost with litellm's, and how the two
share one GIL. Answered at once, a run shows the engine's own cost per llm task with litellm out
of the way; burning the floor's CPU per call, it shows the ratio the engine would have against a
model client that costs what litellm costs, but is not litellm.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's agentctl

from agentctl import cli
from agentctl.runners import llm


def stand_in(burn_s: float) -> None:
    load = llm.load

    def loaded() -> Any:
        litellm = load()
        if getattr(litellm, "_bench_stand_in", False):
            return litellm
        real = litellm.acompletion
        first: list[Any] = []

        async def acompletion(**kwargs: Any) -> Any:
            if burn_s:
                end = time.thread_time() + burn_s
                while time.thread_time() < end:  # a system call: read the clock seldom
                    for _ in range(200):
                        pass
            if not first:
                first.append(await real(**kwargs))
            return copy.copy(first[0])

        litellm.acompletion = acompletion
        litellm._bench_stand_in = True
        return litellm

    llm.load = loaded  # the runner reaches litellm through load() (or _loading, which calls it)


def main() -> None:
    args = sys.argv[1:]
    burn_ms = 0.0
    if args[:1] == ["--burn-ms"]:
        burn_ms, args = float(args[1]), args[2:]
    stand_in(burn_ms / 1000)
    sys.argv = ["agentctl", *args]
    cli.main()


if __name__ == "__main__":
    main()
