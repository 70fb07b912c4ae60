"""Pure planning: tasks and their needs -> waves. No I/O.

A task's wave is one more than the highest wave among its needs (wave 0 needs nothing), so
a wave is exactly the set of tasks whose needs are all settled once the wave before settles.

Graphs are ``task -> the tasks it needs``, in the pipeline file's order; a need that is not a
task of the graph is ignored here (the loader reports it). Nothing here recurses, so a chain
of ten thousand tasks plans as easily as three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat

_LATER = 1 << 62  # the level of a task not yet reached in file order


def _levels_in_file_order(graph: Mapping[str, Sequence[str]]) -> dict[str, int] | None:
    """Each task's wave, in one pass, when every task's needs come before it in the file
    (the usual case; such a graph has no cycle); None when some need comes later, or is the
    task itself. Linear, with the per-need work done by ``map`` and ``max``."""
    level = dict.fromkeys(graph, _LATER)
    get = level.get
    for task, deps in graph.items():
        top = max(map(get, deps, repeat(-1)), default=-1)  # a need outside the graph: -1
        if top >= _LATER:
            return None
        level[task] = top + 1
    return level


def _deps(graph: Mapping[str, Sequence[str]], task: str) -> list[str]:
    return [d for d in dict.fromkeys(graph.get(task, ())) if d in graph]


def find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per group of tasks that need each other, each as a closed path
    ``[a, b, c, a]`` read "a needs b needs c needs a", starting at the group's first task in
    file order. A task that needs itself is a cycle ``[a, a]``."""
    if _levels_in_file_order(graph) is not None:
        return []
    order = {t: i for i, t in enumerate(graph)}
    cycles = []
    for comp in _strongly_connected(graph):
        members = set(comp)
        start = min(comp, key=order.__getitem__)
        if len(comp) == 1 and start not in _deps(graph, start):
            continue
        cycles.append(_cycle_within(graph, members, start))
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """The first cycle of ``find_cycles``, or None."""
    cycles = find_cycles(graph)
    return cycles[0] if cycles else None


def _strongly_connected(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        # Each frame keeps its task's needs: listing them again at every return to the task
        # cost O(needs^2) per task (0.5 s for 10 waves of 100 tasks that need the wave before).
        work: list[tuple[str, int, list[str]]] = [(root, 0, _deps(graph, root))]
        while work:
            node, i, deps = work[-1]
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if i < len(deps):
                work[-1] = (node, i + 1, deps)
                nxt = deps[i]
                if nxt not in index:
                    work.append((nxt, 0, _deps(graph, nxt)))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(comp)
    return out


def _cycle_within(graph: Mapping[str, Sequence[str]], members: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself inside one strongly connected group."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for d in _deps(graph, node):
                if d not in members:
                    continue
                if d == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if d not in prev:
                    prev[d] = node
                    nxt.append(d)
        frontier = nxt
    raise ValueError(f"{start} is not on a cycle")  # unreachable for a strongly connected group


def waves(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Group tasks into waves, keeping the file's order within a wave. Raises ValueError on a
    cycle (check with ``find_cycles`` first)."""
    fast = _levels_in_file_order(graph)
    if fast is not None:
        return _grouped(graph, fast)
    level: dict[str, int] = {}
    waiting = {t: len(_deps(graph, t)) for t in graph}
    needed_by: dict[str, list[str]] = {t: [] for t in graph}
    for t in graph:
        for d in _deps(graph, t):
            needed_by[d].append(t)
    ready = [t for t, n in waiting.items() if n == 0]
    for t in ready:
        level[t] = 0
    while ready:
        t = ready.pop()
        for u in needed_by[t]:
            level[u] = max(level.get(u, 0), level[t] + 1)
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(level) < len(graph) or any(waiting.values()):
        stuck = next(t for t in graph if waiting[t])
        raise ValueError(f"cycle through {stuck}")
    return _grouped(graph, level)


def _grouped(graph: Mapping[str, Sequence[str]], level: Mapping[str, int]) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for t in graph:
        out[level[t]].append(t)
    return out


def wave_of(graph: Mapping[str, Sequence[str]]) -> dict[str, int]:
    fast = _levels_in_file_order(graph)
    if fast is not None:
        return fast
    return {t: i for i, wave in enumerate(waves(graph)) for t in wave}


def dependents(graph: Mapping[str, Sequence[str]], task: str) -> list[str]:
    """Every task that needs ``task``, directly or not, in file order."""
    rev: dict[str, list[str]] = {t: [] for t in graph}
    for t, deps in graph.items():
        for d in deps:
            if d in rev:
                rev[d].append(t)
    out: list[str] = []
    seen = {task}
    frontier = [task]
    while frontier:
        nxt = []
        for t in frontier:
            for u in rev.get(t, ()):
                if u not in seen:
                    seen.add(u)
                    out.append(u)
                    nxt.append(u)
        frontier = nxt
    order = {t: i for i, t in enumerate(graph)}
    return sorted(out, key=order.__getitem__)
