"""The modules of ``src/crossent`` import one way: no module imports, directly or through
others, a module that imports it back, and every module's ``__all__`` names what it defines.

``nox -s lint`` checks the layers themselves (``lint-imports``, contracts in ``pyproject.toml``);
this test needs nothing but the standard library, so every session runs it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import crossent

SOURCE = Path(crossent.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _imported(name: str, path: Path) -> set[str]:
    """The crossent modules that the module ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for imported in sorted(GRAPH[name]):
            cycle = visit(imported, [*path, name])
            if cycle:
                return cycle
        done.add(name)
        return None

    for name in sorted(GRAPH):
        cycle = visit(name, [])
        if cycle:
            return cycle
    return None


def test_the_graph_is_read():
    assert "crossent._generic._categorical" in GRAPH["crossent._categorical"]
    assert "crossent._backends._numpy" in GRAPH["crossent._dispatch"]  # imported in a function


def test_no_module_imports_a_module_that_imports_it_back():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_generic_layer_names_no_public_function():
    above = {"crossent._dispatch", "crossent._gradients", "crossent"}
    above |= {name for name in MODULES if name.startswith("crossent._backends")}
    families = ("_softmax", "_categorical", "_binary", "_divergence")
    above |= {f"crossent.{name}" for name in families}
    for name, imported in GRAPH.items():
        if name.startswith("crossent._generic"):
            assert not imported & above, name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_all_names_what_the_module_defines(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # a kernel module whose framework this session lacks
        pytest.skip(str(error))
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert len(set(exported)) == len(exported), f"{name}.__all__ names something twice"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names {missing}, which it does not define"
