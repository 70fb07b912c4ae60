"""The benchmark script the README tells people to run still runs: its llm part, tiny, end to
end (real child drivers, litellm, the offline model and the stand-in for litellm's call). It
asserts what the script prints, never how fast anything was."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_llm_part_runs_and_prints_every_figure(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_engine.py"), "--only-llm",
         "--tasks", "12", "--repeat", "1", "--llm-latency", "0ms", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = p.stdout
    num = r"(\d+\.\d+)"
    floor = re.search(rf"floor: the same 12 acompletion calls\s+{num}", out)
    alone = re.search(rf"the engine alone: litellm's call answered at once by a stand-in\s+{num}"
                      rf".* = {num} ms/task", out)
    burnt = re.search(rf"a stand-in that burns the floor's CPU per call \({num} ms\), no litellm: "
                      rf"in the run / \(\(tasks-1\) x that\)\s+{num}", out)
    ratio = re.search(rf"in-run span / floor x \(tasks-1\)/tasks\s+{num}x", out)
    assert floor and alone and burnt and ratio, out
    # Figures, not placeholders: each is a measured, positive amount.
    assert all(float(m.group(1)) > 0 for m in (floor, alone, burnt, ratio)), out
    assert float(burnt.group(2)) > 0
    assert not list(tmp_path.iterdir())  # the script removes its work directory
