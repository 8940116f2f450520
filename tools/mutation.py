"""Mutation run: does a test fail when a rule changes?

Each mutant changes one thing in one module (a comparison flipped, a boundary shifted by one, a
boolean or a logical operator swapped, a `not` dropped, a statement or a keyword argument of a
call deleted), anywhere in the module: functions, class bodies (schema fields and their
`required`, `validate`, `load_default`) and module-level tables alike. The module's unit tests
then run against it in a process forked from one that has imported pytest and the libraries but
none of the project's modules, so a run costs what the tests cost. A mutant is killed when a test
fails (or the tests hang, or the module no longer imports); the rest survive, and each survivor is
a rule no test pins, or a change that changes nothing (an equivalent mutant).

    python tools/mutation.py services/topology/domain.py tests/unit/test_topology_*.py
    make mutation          # the contracts and domain modules of every context, with their tests

Prints every survivor (line and change) and the score: killed / all mutants.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import select
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SECONDS = 60.0

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}


@dataclass(frozen=True)
class Mutant:
    index: int
    line: int
    change: str


class _Mutator(ast.NodeTransformer):
    """Walks the tree counting mutation points; applies the one numbered `target` (or none)."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.count = 0
        self.found: list[Mutant] = []

    def _point(self, node: ast.AST, change: str) -> bool:
        """Register a mutation point; True when it is the one to apply."""
        index = self.count
        self.count += 1
        if self.target is None:
            self.found.append(Mutant(index, getattr(node, "lineno", 0), change))
        return index == self.target

    # -- expressions -------------------------------------------------------------------------
    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for position, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap and self._point(node, f"{type(op).__name__} -> {swap.__name__}"):
                node.ops[position] = swap()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._point(node, f"{type(node.op).__name__} -> {other.__name__}"):
            node.op = other()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._point(node, "not x -> x"):
            return node.operand
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            if self._point(node, f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, int):
            if self._point(node, f"{value} -> {value + 1}"):
                return ast.copy_location(ast.Constant(value + 1), node)
            if self._point(node, f"{value} -> {value - 1}"):
                return ast.copy_location(ast.Constant(value - 1), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        for keyword in list(node.keywords):
            if keyword.arg and self._point(node, f"drop {keyword.arg}= of a call"):
                node.keywords = [k for k in node.keywords if k is not keyword]
        return node

    # -- statements ----------------------------------------------------------------------------
    def _bodies(self, node: ast.AST) -> None:
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list) or not body:
                continue
            for position, statement in enumerate(list(body)):
                if _is_docstring(statement) or _is_declaration(statement):
                    continue
                if self._point(statement, f"delete {type(statement).__name__.lower()} "
                                          f"(line {statement.lineno})"):
                    body[position] = ast.copy_location(ast.Pass(), statement)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.If | ast.For
                      | ast.While | ast.With | ast.Try):
            self._bodies(node)
        return super().generic_visit(node)


def _is_declaration(statement: ast.stmt) -> bool:
    """Imports and `__all__`: deleting them changes what a module offers, not what it does."""
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return True
    targets = statement.targets if isinstance(statement, ast.Assign) else []
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def mutants(source: str) -> list[Mutant]:
    mutator = _Mutator()
    mutator.visit(ast.parse(source))
    return mutator.found


def mutated(tree: ast.Module, index: int) -> str:
    mutator = _Mutator(index)
    changed = mutator.visit(copy.deepcopy(tree))
    return ast.unparse(ast.fix_missing_locations(changed))


def module_name(path: Path) -> str:
    return ".".join(path.resolve().relative_to(ROOT).with_suffix("").parts)


def _run_tests(name: str, path: Path, source: str | None, tests: list[str]) -> int:
    """In a forked child: install the mutant module, run the tests, exit with pytest's code."""
    import importlib

    import pytest

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    if source is not None:
        parent, _, child = name.rpartition(".")
        module = type(sys)(name)
        module.__file__ = str(path)
        module.__package__ = parent
        sys.modules[name] = module
        try:
            exec(compile(source, str(path), "exec"), module.__dict__)
        except Exception:
            return 3  # the mutant does not even import: killed
        if parent:
            setattr(importlib.import_module(parent), child, module)
    return int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            "-o", "addopts=", *tests]))


def _spawn(name: str, path: Path, source: str | None, tests: list[str]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            code = _run_tests(name, path, source, tests)
        finally:
            os._exit(code)
    return pid


def run(path: Path, tests: list[str], jobs: int) -> tuple[int, list[Mutant]]:
    """Killed count and survivors of every mutant of `path`."""
    source = path.read_text()
    tree = ast.parse(source)
    name = module_name(path)
    found = mutants(source)
    pid = _spawn(name, path, None, tests)
    if os.waitpid(pid, 0)[1] != 0:
        raise SystemExit(f"{path}: the tests fail without any mutant; fix them first")
    survivors: list[Mutant] = []
    killed = 0
    queue: Iterator[Mutant] = iter(found)
    running: dict[int, tuple[Mutant, float]] = {}
    done = 0
    while True:
        while len(running) < jobs:
            mutant = next(queue, None)
            if mutant is None:
                break
            running[_spawn(name, path, mutated(tree, mutant.index), tests)] = (
                mutant, time.monotonic())
        if not running:
            break
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for child, (_, started) in list(running.items()):
                if time.monotonic() - started > TIMEOUT_SECONDS:
                    os.kill(child, signal.SIGKILL)  # a hang is a failure the tests noticed
            select.select([], [], [], 0.01)
            continue
        mutant, _ = running.pop(pid)
        done += 1
        if os.waitstatus_to_exitcode(status) == 0:
            survivors.append(mutant)
        else:
            killed += 1
        if done % 50 == 0:
            print(f"  {path}: {done}/{len(found)}", file=sys.stderr, flush=True)
    return killed, sorted(survivors, key=lambda m: m.line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", type=Path)
    parser.add_argument("tests", nargs="+")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    # The libraries the modules use, imported once here, so a child only runs the tests.
    import eventsourcing.domain  # noqa: F401
    import marshmallow  # noqa: F401
    import pytest  # noqa: F401

    started = time.monotonic()
    killed, survivors = run(args.module, args.tests, args.jobs)
    total = killed + len(survivors)
    for mutant in survivors:
        print(f"survived: {args.module}:{mutant.line}: {mutant.change}")
    score = 100.0 * killed / total if total else 100.0
    print(f"{args.module}: {killed}/{total} mutants killed, score {score:.1f}% "
          f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
