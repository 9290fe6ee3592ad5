"""The package's layers, read from its import statements (those inside functions included).

From the bottom: ``core`` (no Dagster), then the definitions (``assets``, ``resources``, ``build`` and
the modules they read), then the runner (``runner``) and the command line (``cli``). A layer imports
only those below it, and no modules import each other in a circle: a deferred import does not make a
circle acceptable, it only hides it from Python.
"""

import ast
from pathlib import Path

import augassets

PACKAGE = Path(augassets.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found |= {t for t in [target, *(f"{target}.{alias.name}" for alias in node.names)] if t in modules}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
        graph[name] = found - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert circles(module_imports()) == []


def test_the_circle_finder_finds_a_circle_through_a_deferred_import():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_each_layer_imports_only_the_layers_below_it():
    graph = module_imports()
    runner_and_cli = {name for name in graph if name.startswith("augassets.runner") or name == "augassets.cli"}
    for name, imported in graph.items():
        if name.startswith("augassets.core"):
            # core is Dagster-free and knows nothing of the definitions; it may read the settings' types and
            # hash them (versions: a leaf without Dagster).
            leaves = {"augassets", "augassets.profiles", "augassets.versions"}
            assert imported <= {n for n in graph if n.startswith("augassets.core")} | leaves, (
                f"{name} imports {sorted(imported)}"
            )
        elif name not in runner_and_cli:
            assert not imported & runner_and_cli, (
                f"{name} (a definitions module) imports the runner: {sorted(imported & runner_and_cli)}"
            )


LONG_MODULE = 450
LONG_REASON = "Why this module is long:"


def test_a_module_over_450_lines_says_why_at_its_top():
    """A long module is a sign of one that does several jobs; one that stays long says why in its docstring."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > LONG_MODULE and LONG_REASON not in docstring:
            unexplained.append(f"{path.relative_to(PACKAGE.parent)} ({text.count(chr(10))} lines)")
    assert unexplained == [], f"split these modules or add '{LONG_REASON} …' to their docstring: {unexplained}"
