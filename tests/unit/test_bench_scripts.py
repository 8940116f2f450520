"""Every benchmark script imports: `make bench` runs them where no test does, and one of them
once imported a function the chassis had dropped, so the whole run stopped at its end."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("*.py")))
def test_each_benchmark_script_imports(script: str) -> None:
    module = importlib.import_module(f"bench.{script}")

    if script not in {"__init__", "cluster", "stats"}:
        assert callable(getattr(module, "main", None)), f"bench/{script}.py has no main()"
