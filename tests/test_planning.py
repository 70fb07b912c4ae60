"""Pure planning: waves, cycles, dependents. No disk."""

from __future__ import annotations

import random

import pytest

from agentctl.planning import dependents, find_cycle, find_cycles, wave_of, waves


def test_waves_of_the_example_shape() -> None:
    graph = {"layout": [], "api": [], "risks": [], "plan": ["layout", "api", "risks"],
             "review": ["plan"]}
    assert waves(graph) == [["layout", "api", "risks"], ["plan"], ["review"]]


def test_a_wave_keeps_the_file_order_and_waits_for_the_slowest_need() -> None:
    graph = {"z": [], "d": ["c"], "c": ["a"], "a": [], "b": ["a"], "e": ["z", "d"]}
    assert waves(graph) == [["z", "a"], ["c", "b"], ["d"], ["e"]]
    assert wave_of(graph) == {"z": 0, "a": 0, "c": 1, "b": 1, "d": 2, "e": 3}


def test_needs_outside_the_graph_and_repeated_needs_are_ignored() -> None:
    assert waves({"a": ["ghost"], "b": ["a", "a"]}) == [["a"], ["b"]]
    assert waves({}) == []


def test_a_long_chain_plans_without_recursion() -> None:
    n = 5000
    graph = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}
    plan = waves(graph)
    assert len(plan) == n and plan[-1] == [f"t{n - 1}"]
    assert find_cycles(graph) == []


def test_waves_refuse_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle through"):
        waves({"a": ["b"], "b": ["a"], "c": []})


def test_a_cycle_is_named_whole_from_its_first_task() -> None:
    graph = {"start": [], "a": ["start", "c"], "b": ["a"], "c": ["b"]}
    assert find_cycles(graph) == [["a", "c", "b", "a"]]
    assert find_cycle(graph) == ["a", "c", "b", "a"]


def test_every_cycle_once() -> None:
    graph = {"x": ["y"], "y": ["x"], "ok": ["x"], "p": ["q"], "q": ["r"], "r": ["p"], "s": ["s"]}
    assert find_cycles(graph) == [["x", "y", "x"], ["p", "q", "r", "p"], ["s", "s"]]


def test_the_shortest_way_round_a_tangle() -> None:
    # a, b, c all need each other: one group, one cycle reported, the shortest from 'a'.
    graph = {"a": ["b", "c"], "b": ["c", "a"], "c": ["a"]}
    assert find_cycles(graph) == [["a", "b", "a"]]


def test_no_cycle() -> None:
    assert find_cycle({"a": [], "b": ["a"]}) is None


def test_dependents_in_file_order() -> None:
    graph = {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["a", "d"]}
    assert dependents(graph, "a") == ["b", "c", "e"]
    assert dependents(graph, "d") == ["e"]
    assert dependents(graph, "c") == []


def test_file_order_and_any_order_plan_alike() -> None:
    # Needs that all come earlier in the file plan in one pass; any other order takes the
    # general way. Both must give every task the same wave, and find the same cycles.
    rnd = random.Random(7)
    for _ in range(200):
        n = rnd.randint(1, 30)
        ids = [f"t{i}" for i in range(n)]
        graph = {t: rnd.sample(ids[:i], rnd.randint(0, min(i, 4))) + rnd.sample(["ghost"], rnd.randint(0, 1))
                 for i, t in enumerate(ids)}
        shuffled = dict(rnd.sample(list(graph.items()), n))
        assert wave_of(graph) == wave_of(shuffled)
        assert sorted(map(sorted, waves(graph))) == sorted(map(sorted, waves(shuffled)))
        assert find_cycles(graph) == find_cycles(shuffled) == []
        back = rnd.choice(ids)  # t0 needing a task that needs it (or itself) closes a cycle
        looped = {**graph, ids[0]: [*graph[ids[0]], back]}
        closes = back == ids[0] or back in dependents(graph, ids[0])
        cycles = find_cycles(looped)
        assert bool(cycles) == closes
        assert all(ids[0] in c and back in c for c in cycles)


def test_a_wave_of_a_thousand_tasks_each_needing_the_last_wave() -> None:
    prev: list[str] = []
    graph: dict[str, list[str]] = {}
    for w in range(10):
        ids = [f"w{w}-t{i}" for i in range(100)]
        graph.update({t: prev for t in ids})
        prev = ids
    plan = waves(graph)
    assert [len(w) for w in plan] == [100] * 10 and plan[3][0] == "w3-t0"
    assert find_cycles(graph) == []
