"""Rules of the code base itself: modules use one another's public names only, and a
missing parity reference fails under CI instead of skipping."""

import ast
import os

import pytest

from _oracle import import_oracle

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bert4x")


def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as file:
                    yield os.path.relpath(path, PACKAGE), ast.parse(file.read())


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def private_imports(tree):
    """``module.name`` of every private name one module takes from another bert4x
    module: ``from bert4x.x import _y`` or ``x._y`` on an imported bert4x module."""
    found, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bert4x"):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.module}.{alias.name}")
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bert4x") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and _private(node.attr)):
            found.append(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_private_imports_are_found():
    tree = ast.parse("from bert4x.models import _config_in, build_transformer_model\n"
                     "from bert4x import models as native\nnative._resolve(1)\n")
    assert private_imports(tree) == ["bert4x.models._config_in", "bert4x.models._resolve"]


def test_no_module_imports_another_modules_private_names():
    found = {path: names for path, tree in _sources() if (names := private_imports(tree))}
    assert not found, f"private names used across modules: {found}"


def test_missing_reference_fails_under_ci_and_skips_elsewhere(monkeypatch):
    missing = "bert4x_no_such_reference_package"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ModuleNotFoundError):
        import_oracle(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        import_oracle(missing)
    assert import_oracle("json").dumps([1]) == "[1]"


# ------------------------------------------------------------------ the import graph
# The core every family builds on; it learns about families from bert4x.registry only.
CORE = ("bert4x.transformer", "bert4x.layers", "bert4x.checkpoints", "bert4x.configs",
        "bert4x.registry")


def _module_name(relative_path):
    parts = relative_path[: -len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["bert4x"] + parts)


def imported_modules(tree, module, modules):
    """The bert4x modules ``module`` imports anywhere in ``tree`` (at module level and
    inside functions alike): ``import bert4x.x``, ``from bert4x.x import y`` (``y`` when
    it is a module itself, else ``bert4x.x``) and relative imports. A package's
    ``__init__`` that Python runs on the way to a submodule is not counted: only what
    the code names."""
    package = module if module + ".__init__" in modules else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {name for name in found if name in modules}


def import_graph():
    """``{module: set of bert4x modules it imports}`` for every module of the package."""
    trees = {_module_name(path): (path, tree) for path, tree in _sources()}
    # Packages are also known as "<name>.__init__", so that relative imports resolve.
    modules = set(trees) | {name + ".__init__" for name, (path, _) in trees.items()
                            if path.endswith("__init__.py")}
    return {name: imported_modules(tree, name, modules) for name, (_, tree) in trees.items()}


def import_cycles(graph):
    """Every strongly connected group of two or more modules (or a module importing
    itself): each is an import cycle. Tarjan's algorithm, without recursion."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph.get(node, ()):
                    cycles.append(sorted(group))
    return cycles


def reachable(graph, start):
    """The modules ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_import_graph_is_read_from_function_level_and_relative_imports():
    modules = {"bert4x.a", "bert4x.b", "bert4x.pkg", "bert4x.pkg.__init__", "bert4x.pkg.c"}
    tree = ast.parse("import os\nfrom bert4x import b\n"
                     "def f():\n    from bert4x.pkg import c, name\n"
                     "    from . import a\n")
    assert imported_modules(tree, "bert4x.a", modules) == {"bert4x.a", "bert4x.b",
                                                           "bert4x.pkg", "bert4x.pkg.c"}
    tree = ast.parse("from .c import thing\nfrom .. import b\n")
    assert imported_modules(tree, "bert4x.pkg", modules) == {"bert4x.pkg.c", "bert4x.b"}
    assert import_cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
    assert import_cycles({"x": {"x"}, "y": set()}) == [["x"]]
    assert reachable({"x": {"y"}, "y": {"z"}, "z": set()}, "x") == {"y", "z"}


def test_bert4x_has_no_import_cycle():
    graph = import_graph()
    assert "bert4x.transformer" in graph and "bert4x.models" in graph
    assert not import_cycles(graph), f"import cycles: {import_cycles(graph)}"


def test_core_never_imports_the_families():
    """The families register themselves; the core finds them in bert4x.registry."""
    graph = import_graph()
    for module in CORE:
        assert module in graph, f"{module} is gone: update CORE"
        families = sorted(name for name in reachable(graph, module)
                          if name == "bert4x.families" or name.startswith("bert4x.families."))
        assert not families, f"{module} imports {families}"
