"""The import graph of the project: no cycles, and the layers point one way.

Every `import` statement counts, at the top of a module or inside a function: an import
deferred into a function still makes the modules depend on each other, and a cycle through
one is a cycle a reader has to untangle. Imports by name at run time
(`importlib.import_module` in pipeline/cli.py) are not statements and are not seen.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models", "features", "bench")
# package -> the packages it must never import (models/ and features/ stand alone; bench/ only
# measures the others).
FORBIDDEN = {"models": {"pipeline", "bench"}, "features": {"pipeline", "bench"}, "pipeline": {"bench"}}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted name -> file of every module of PACKAGES under `root`."""
    return {module_name(path, root): path
            for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def _resolve(name: str, modules) -> str | None:
    """The project module `name` is, or is inside (`pipeline.stages.train.run` -> pipeline.stages.train)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(source: str, module: str, modules, is_package: bool = False) -> set[str]:
    """The project modules that `source` (module `module`) imports, anywhere in its body.

    `from pipeline import preprocess` imports the module pipeline.preprocess; `from pipeline.train
    import run` imports pipeline.train. Relative imports are resolved against the module's package.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in map(lambda n: _resolve(n, modules), names) if target)
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(path.read_text(), name, modules, is_package=path.name == "__init__.py")
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. Depth-first, in sorted order (stable messages)."""
    state: dict[str, str] = {}  # module -> "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if target.split(".")[0] in FORBIDDEN.get(module.split(".")[0], ()))


# ---------------------------------------------------------------- the project
def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_models_and_features_never_import_pipeline():
    assert forbidden_imports(import_graph()) == []


def test_graph_sees_the_project():
    """Guards the checks above against walking nothing: known edges are in the graph."""
    graph = import_graph()
    assert {"pipeline.stages.train", "models.gates", "features.spec", "bench.common"} <= set(graph)
    assert "pipeline.config" in graph["pipeline.cli"]  # top level
    # inside a function, `from pipeline.stages import x`:
    assert "pipeline.stages.preprocess" in graph["pipeline.stages.compare"]


# ---------------------------------------------------------------- the checker itself
MODULES = {"pipeline", "pipeline.train", "pipeline.export", "pipeline.runs", "models", "models.gates"}


def test_function_level_import_makes_a_cycle():
    """The cycle of main at f84ddf3: train imported export at the top, export imported train
    inside its functions."""
    train = "from pipeline.export import export_model\n"
    export = ("import tensorflow as tf\n"
              "def export_run(run_dir):\n"
              "    from pipeline.train import restore_model\n"
              "    return restore_model(run_dir)\n")
    graph = {"pipeline.train": imports_of(train, "pipeline.train", MODULES),
             "pipeline.export": imports_of(export, "pipeline.export", MODULES)}
    assert graph == {"pipeline.train": {"pipeline.export"}, "pipeline.export": {"pipeline.train"}}
    assert find_cycle(graph) == ["pipeline.export", "pipeline.train", "pipeline.export"]


def test_import_forms_resolve_to_modules():
    source = ("import pipeline.train\n"
              "from pipeline import runs, train as t\n"
              "from . import export\n"
              "from .gates import Gate\n"  # no module pipeline.gates: counts as its package
              "from models.gates import build_gate\n"
              "import numpy as np\n"
              "from pipeline import helper_in_init\n")
    assert imports_of(source, "pipeline.compare", MODULES) == {
        "pipeline.train", "pipeline.runs", "pipeline.export", "models.gates", "pipeline"}
    assert imports_of("from .gates import Gate\n", "models", MODULES, is_package=True) == {"models.gates"}


def test_cycle_finder_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is not a cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"x": {"y"}, "y": set(), "p": {"q"}, "q": {"y", "p"}}) == ["p", "q", "p"]


def test_forbidden_layers_are_named():
    graph = {"models.sparse": {"pipeline.export", "models.gates"}, "features.spec": set(),
             "pipeline.train": {"models.gates"}, "bench.train": {"pipeline.train"}}
    assert forbidden_imports(graph) == ["models.sparse imports pipeline.export"]
