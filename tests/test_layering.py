"""The package's import graph, read from the source with `ast`: the layers of `gfss_bench/__init__.py` (no folder
imports a folder above it), no cycles, and results code runs no models.

Every `import`/`from ... import` of a gfss_bench module counts, at module level or inside a function,
with relative imports resolved. Importing `a.b.c` also imports the packages `a.b` (their `__init__`),
so those count too, except the packages that enclose the importing module (already being imported).
Two kinds of import never run as part of the package and are left out: those under
`if TYPE_CHECKING:` (annotations only) and those under `if __name__ == "__main__":` (they run when the
file is executed as a script, which Python loads as a separate `__main__` module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import gfss_bench
from gfss_bench import LAYERS

PACKAGE_DIR = Path(gfss_bench.__file__).resolve().parent


def package_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package `__init__`)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _skipped_block(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:` / `if __name__ == "__main__":`."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    if isinstance(test, (ast.Name, ast.Attribute)):
        return (test.id if isinstance(test, ast.Name) else test.attr) == "TYPE_CHECKING"
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _imports(tree: ast.AST):
    """Import nodes of a module, module-level and nested, outside the skipped blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if _skipped_block(child):
                todo.extend(child.orelse)  # the `else:` branch does run
            else:
                todo.append(child)


def imported_names(module: str, path: Path, is_package: bool) -> set[str]:
    """Absolute dotted names a module imports (a `from X import y` names X.y, which may be a module)."""
    names = set()
    here = module if is_package else module.rpartition(".")[0]
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parent = here.split(".")[: len(here.split(".")) - node.level + 1]
            base = ".".join(parent + ([node.module] if node.module else []))
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """gfss_bench module -> the gfss_bench modules (and packages) importing it runs."""
    modules = package_modules(package_dir)
    graph = {}
    for module, (path, is_package) in modules.items():
        enclosing = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        deps = set()
        for name in imported_names(module, path, is_package):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the module itself and every package above it
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix not in enclosing:
                    deps.add(prefix)
        deps.discard(module)
        graph[module] = deps
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The components of more than one module (iterative Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while node not in component:
                        component.add(stack.pop())
                    on_stack -= component
                    if len(component) > 1:
                        components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def shortest_cycle(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    """start -> ... -> start, breadth-first inside its strongly connected component."""
    paths, frontier = {start: [start]}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    return paths[node] + [start]
                if child not in paths:
                    paths[child] = paths[node] + [child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is on no cycle of its component")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The shortest cycle through each module that is on one, each cycle once (rotated to start at its
    smallest name)."""
    found = set()
    for component in strongly_connected(graph):
        for module in component:
            cycle = shortest_cycle(graph, module, component)[:-1]
            i = cycle.index(min(cycle))
            found.add(tuple(cycle[i:] + cycle[:i] + [cycle[i]]))
    return sorted(list(cycle) for cycle in found)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """The parser on a miniature package: a cycle made of a function-level and a relative import is found,
    the skipped blocks are not followed, and importing a submodule counts its package."""
    pkg = tmp_path / "gfss_bench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from gfss_bench.low import x\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "sub" / "b.py").write_text("from .a import f\nfrom typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    from gfss_bench import low\n")
    (pkg / "low.py").write_text("if __name__ == '__main__':\n    import gfss_bench.sub.a\nelse:\n    x = 1\n")
    (pkg / "top.py").write_text("import gfss_bench.sub.a\n")
    graph = import_graph(pkg)
    assert graph["gfss_bench.sub.a"] == {"gfss_bench.sub.b"}  # not its own package
    assert graph["gfss_bench.sub.b"] == {"gfss_bench.sub.a"}
    assert graph["gfss_bench.low"] == set()
    assert graph["gfss_bench.top"] == {"gfss_bench.sub", "gfss_bench.sub.a"}
    assert graph["gfss_bench.sub"] == {"gfss_bench.low"}
    assert cycles(graph) == [["gfss_bench.sub.a", "gfss_bench.sub.b", "gfss_bench.sub.a"]]
    (pkg / "low.py").write_text("import gfss_bench.top\n")
    assert cycles(import_graph(pkg)) == [["gfss_bench.low", "gfss_bench.top", "gfss_bench.sub", "gfss_bench.low"],
                                         ["gfss_bench.sub.a", "gfss_bench.sub.b", "gfss_bench.sub.a"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30 and "gfss_bench.evaluation.runner" in graph  # the real package was read
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


# what results code may not reach: the segmenters, the methods and the evaluation that runs them (the
# sweep, the plugins and the CLI sit above these, so reaching them would reach these too)
MODEL_RUNNING = ("gfss_bench.models", "gfss_bench.methods", "gfss_bench.evaluation.runner",
                 "gfss_bench.evaluation.distributed", "gfss_bench.cli")


def test_results_run_no_models():
    """gfss_bench.results.* (store, report, export, plot, published) works on stored JSON.

    Rule: nothing it imports, directly or through other gfss_bench modules, is in MODEL_RUNNING, and neither a
    results module nor any gfss_bench module it reaches imports torch (the IoU arithmetic it uses,
    `gfss_bench.metrics`, is numpy; the torch scorer is `gfss_bench.scoring`)."""
    graph = import_graph()
    modules = package_modules()
    results = [m for m in graph if m == "gfss_bench.results" or m.startswith("gfss_bench.results.")]
    assert "gfss_bench.results.report" in results
    problems = []
    for module in results:
        reached, todo = set(), [module]
        while todo:
            for dep in graph[todo.pop()] - reached:
                reached.add(dep)
                todo.append(dep)
        problems += [f"{module} reaches {dep}" for dep in sorted(reached)
                     if any(dep == bad or dep.startswith(bad + ".") for bad in MODEL_RUNNING)]
        for importer in [module, *sorted(reached)]:
            if any(n == "torch" or n.startswith("torch.") for n in imported_names(importer, *modules[importer])):
                problems.append(f"{module} reaches {importer}, which imports torch")
    assert not problems, "\n".join(sorted(set(problems)))


def layer_of(module: str) -> tuple[int, str]:
    """(rank, layer name) of a module, from `gfss_bench.LAYERS` (the package `gfss_bench` itself is core)."""
    if module == "gfss_bench":
        return 0, "core"
    for rank, layers in enumerate(LAYERS):
        for name, prefixes in layers.items():
            if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
                return rank, name
    raise AssertionError(f"{module} is in no layer of gfss_bench.LAYERS: add its folder there")


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module in a layer at or above the importer's own rank, other than its own layer."""
    problems = []
    for module, deps in sorted(graph.items()):
        rank, name = layer_of(module)
        for dep in sorted(deps):
            dep_rank, dep_name = layer_of(dep)
            if dep_name != name and dep_rank >= rank:
                problems.append(f"{module} ({name}) imports {dep} ({dep_name})")
    return problems


def test_no_folder_imports_a_folder_above_it():
    graph = import_graph()
    problems = back_edges(graph)
    assert not problems, "layer back edges (see gfss_bench.LAYERS):\n" + "\n".join(problems)


def test_a_planted_back_edge_is_caught(tmp_path):
    """The rule on a copy of the real tree with one import added: data -> evaluation (a folder above), then
    models <-> methods (two folders of the same rank)."""
    import shutil

    copy = tmp_path / "gfss_bench"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    assert not back_edges(import_graph(copy))
    target = copy / "data" / "transforms.py"
    target.write_text(target.read_text() + "\n\ndef planted():\n    from gfss_bench.evaluation import spec\n")
    assert back_edges(import_graph(copy)) == [
        "gfss_bench.data.transforms (data) imports gfss_bench.evaluation (evaluation)",
        "gfss_bench.data.transforms (data) imports gfss_bench.evaluation.spec (evaluation)"]
    target = copy / "methods" / "imprint.py"
    target.write_text(target.read_text() + "\nimport gfss_bench.models.segmenter  # noqa\n")
    assert any(problem.startswith("gfss_bench.methods.imprint (methods) imports gfss_bench.models")
               for problem in back_edges(import_graph(copy)))
