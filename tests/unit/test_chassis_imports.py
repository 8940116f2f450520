"""The chassis has no import cycle: each module can be read, tested and changed from the bottom
(`records`, `config`) up (`runtime`, `contexts`, `cli`) without meeting itself on the way.

Imports inside functions count too (they only hide a cycle until the function runs); imports
under `if TYPE_CHECKING:` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

CHASSIS = Path(__file__).resolve().parents[2] / "concierge"


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> set[str]:
    """The chassis modules a module imports, outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.ImportFrom) and child.module:
                if child.module == "concierge":
                    found.update(alias.name for alias in child.names)
                elif child.module.startswith("concierge."):
                    found.add(child.module.split(".")[1])
            elif isinstance(child, ast.Import):
                found.update(alias.name.split(".")[1] for alias in child.names
                             if alias.name.startswith("concierge."))
            stack.append(child)
    return found


def graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in CHASSIS.glob("*.py") if path.stem != "__init__"}
    return {name: _imports(ast.parse(path.read_text())) & set(modules) - {name}
            for name, path in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(edges[module]):
            if state.get(imported) == 1:
                return [*path[path.index(imported):], imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_chassis_has_no_import_cycle() -> None:
    found = cycle(graph())
    assert found is None, f"import cycle in concierge/: {' -> '.join(found or [])}"


def test_the_check_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_records_is_the_bottom_of_the_chassis() -> None:
    assert graph()["records"] == set()
