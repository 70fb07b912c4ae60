"""The benchmark script the README tells people to run still runs: its llm part, tiny, end to
end (real child drivers, their model hosts, litellm and the offline model, and a run with
litellm in the driver). It asserts what the script prints, never how fast anything was."""

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
    signed = r"(-?\d+\.\d+)"  # a difference of two runs: tiny runs may come out below zero
    cpu = re.search(rf"CPU per task: the driver \(the engine\)\s+{signed} ms; "
                    rf"the model host \(litellm\) {signed} ms", out)
    inline = re.search(rf"litellm in the driver \(AGENTCTL_MODEL_HOST=0\), in the run\s+{num}"
                       rf".* = {num}x the floor", out)
    ratio = re.search(rf"in-run span / floor x \(tasks-1\)/tasks\s+{num}x", out)
    assert floor and cpu and inline and ratio, out
    # Figures, not placeholders: each is a measured, positive amount.
    assert all(float(m.group(1)) > 0 for m in (floor, inline, ratio)), out
    assert float(inline.group(2)) > 0
    assert not list(tmp_path.iterdir())  # the script removes its work directory
