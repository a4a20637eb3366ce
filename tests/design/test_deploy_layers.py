"""The runtime apart from the deploy targets: the engine imports nothing of bnnprune.deploy,
and neither the engine nor deploy reaches the training package (at module level or inside a
function), so a checkpoint is deployed without it."""

from __future__ import annotations

from .test_import_cycles import import_graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for d in graph[m] - seen:
            seen.add(d)
            todo.append(d)
    return seen


def test_engine_does_not_import_deploy_and_neither_imports_training() -> None:
    graph = import_graph()
    for top in ("bnnprune.engine", "bnnprune.deploy"):
        mods = [m for m in graph if m == top or m.startswith(top + ".")]
        assert mods
        reached = set().union(*(_reach(graph, m) for m in mods))
        assert not {m for m in reached if m.startswith("bnnprune.train")}, top
        if top == "bnnprune.engine":
            assert not {m for m in reached if m.startswith("bnnprune.deploy")}
