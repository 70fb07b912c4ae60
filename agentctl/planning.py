"""Pure planning: tasks and their needs -> waves. No I/O.

A task's wave is one more than the highest wave among its needs (wave 0 needs nothing), so
a wave is exactly the set of tasks whose needs are all settled once the wave before settles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle in ``task -> needs``, as a closed path ``[a, b, c, a]``, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    for start in graph:
        if color[start] != WHITE:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        color[start] = GREY
        while stack:
            node, i = stack[-1]
            deps = [d for d in graph.get(node, ()) if d in graph]
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                if color[nxt] == GREY:
                    cyc = path[path.index(nxt):] + [nxt]
                    # Read as "a needs b needs c needs a".
                    return cyc
                if color[nxt] == WHITE:
                    color[nxt] = GREY
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = BLACK
                stack.pop()
                path.pop()
    return None


def waves(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Group tasks into waves, keeping the file's order within a wave. The graph must be
    acyclic (check with ``find_cycle`` first)."""
    level: dict[str, int] = {}

    def depth(t: str, trail: frozenset[str] = frozenset()) -> int:
        if t in level:
            return level[t]
        if t in trail:
            raise ValueError(f"cycle through {t}")
        deps = [d for d in graph.get(t, ()) if d in graph]
        level[t] = 0 if not deps else 1 + max(depth(d, trail | {t}) for d in deps)
        return level[t]

    # Iterative order keeps recursion shallow for long chains.
    for t in graph:
        for d in _topo_from(t, graph):
            depth(d)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for t in graph:
        out[level[t]].append(t)
    return out


def _topo_from(start: str, graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Dependencies of ``start`` in post-order (deepest first), without recursion."""
    order: list[str] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(start, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for d in graph.get(node, ()):
            if d in graph and d not in seen:
                stack.append((d, False))
    return order


def wave_of(graph: Mapping[str, Sequence[str]]) -> dict[str, int]:
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
            for u in rev[t]:
                if u not in seen:
                    seen.add(u)
                    out.append(u)
                    nxt.append(u)
        frontier = nxt
    order = {t: i for i, t in enumerate(graph)}
    return sorted(out, key=order.__getitem__)
