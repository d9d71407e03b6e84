"""The simulator's modules import one way: each only from those below it, at the top of the file,
and only public names; and nothing of the client it checks (no `jobs`, no other `runner` package)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runner.simulator

FOLDER = Path(runner.simulator.__file__).parent
# Bottom first: a module may import only modules listed before it (server.py's docstring draws it)
LAYERS = ("answers", "parsing", "budgets", "config", "faults", "responses", "images", "service",
          "completions", "routes", "batches", "server")


def _imports(module: str) -> list[tuple[ast.ImportFrom | ast.Import, bool]]:
    """Every import of `module`, with whether it sits at the top level of the file."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text())
    top = {id(node) for node in tree.body}
    return [(node, id(node) in top) for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_every_module_of_the_simulator_has_its_place_in_the_layers() -> None:
    assert sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__") == sorted(LAYERS)


@pytest.mark.parametrize("module", LAYERS)
def test_a_module_imports_only_the_layers_below_it_at_the_top_and_only_public_names(module) -> None:
    below = LAYERS[:LAYERS.index(module)]
    for node, at_top in _imports(module):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            root = name.split(".")[0]
            assert root != "jobs", f"{module} imports the client's {name}"
            if root != "runner":
                continue
            assert at_top, f"{module} imports {name} inside a function"
            assert name.startswith("runner.simulator"), f"{module} imports the client's {name}"
            if name == "runner.simulator":  # `from runner.simulator import images as img`
                siblings = [a.name for a in node.names]
            else:
                siblings = [name.removeprefix("runner.simulator.")]
                assert isinstance(node, ast.ImportFrom)
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{module} imports private {private} from {name}"
            for sibling in siblings:
                assert sibling in below, f"{module} imports {sibling}, which is not below it"
