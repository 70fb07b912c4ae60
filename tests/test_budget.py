"""Run budgets (issue 4, item 5), through the CLI: ``limits.budget.usd`` / ``.tokens`` stop the
dispatching, let running tasks end, end the run ``budget_exceeded`` (exit 4), and hold across
resumes because spending is summed from the WAL; ``resume --budget-usd/--budget-tokens``
continues. Per-task budgets are in test_llm_offline.py.

Costs come from real litellm pricing: ``openai/gpt-4o-mini`` through the fake server (a known
price per token), and the offline provider's registered price.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeopenai import FakeOpenAI, Reply
from llmkit import LLMProject

from agentctl.runners import litellm_client


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LLMProject:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-budget-0123456789abcdef")
    return LLMProject(tmp_path)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as s:
        yield s


def test_a_usd_budget_stops_a_wave_midway_and_resume_continues(proj: LLMProject,
                                                              server: FakeOpenAI) -> None:
    price = litellm_client.load().model_cost["gpt-4o-mini"]["input_cost_per_token"]
    per_call = 10_000 * price
    server.script("gpt-4o-mini", *[Reply(usage=(10_000, 0))] * 12)
    tasks = {f"t{i}": {} for i in range(6)}  # one wave of six
    p = proj.pipeline(tasks, defaults={"model": f"openai/gpt-4o-mini?api_base={server.url}"},
                      limits={"concurrency": 2, "budget": {"usd": round(2.5 * per_call, 10)}})
    r, rid = proj.run(p)
    assert r.code == 4, r.stderr
    assert f"run {rid} is budget_exceeded" in r.stderr
    st = proj.status(rid)
    assert st["status"] == "budget_exceeded"
    statuses = [t["status"] for t in st["tasks"]]
    done, pending = statuses.count("complete"), statuses.count("pending")
    # Dispatching stopped once 2.5 calls' worth was spent; the running tasks were let end.
    assert 3 <= done <= 4 and done + pending == 6, statuses
    assert len(server.requests) == done  # nothing was started, or paid for, past the stop
    assert st["totals"]["cost_usd"] == pytest.approx(done * per_call, abs=1e-6)
    assert st["totals"]["cost_usd"] >= 2.5 * per_call

    r = proj.cli("resume", rid, "--budget-usd", "1")
    assert r.code == 0, r.stderr
    st = proj.status(rid)
    assert st["status"] == "complete" and st["totals"]["complete"] == 6
    assert len(server.requests) == 6  # the complete tasks did not run again
    assert all(t["attempts"] == 1 for t in st["tasks"])


def test_a_token_budget_holds_across_resumes(proj: LLMProject) -> None:
    p = proj.pipeline({"a": {}, "b": {}, "c": {}},
                      limits={"concurrency": 1, "budget": {"tokens": 10}})
    r, rid = proj.run(p)
    assert r.code == 4, r.stderr
    first = proj.status(rid)
    assert first["status"] == "budget_exceeded" and first["totals"]["complete"] == 1
    assert len(proj.calls(rid)) == 1

    # Spending is summed from the WAL: a plain resume is still over budget, and pays nothing.
    r = proj.cli("resume", rid)
    assert r.code == 4, r.stderr
    assert proj.status(rid)["status"] == "budget_exceeded" and len(proj.calls(rid)) == 1

    r = proj.cli("resume", rid, "--budget-tokens", "1000000")
    assert r.code == 0, r.stderr
    st = proj.status(rid)
    assert st["status"] == "complete" and len(proj.calls(rid)) == 3
    assert st["totals"]["tokens"] == sum(c["tokens"] for c in proj.calls(rid))
