"""Interleaved A/B runs of one benchmark on two commits, on this machine, in one sitting.

Usage: python bench/ab.py BASE [OTHER] [--pairs N] [--script NAME] [--args ARGS] [--figure PATH]...
       (or: make bench-ab BASE=<commit>)

Consecutive runs of the same code on a shared 2-core machine drift by 15% or more, so a figure
measured on one commit today and on another yesterday says little about the change between
them. Here each commit is checked out into its own git worktree and its own copy of the
benchmark script runs in turn (BASE, OTHER, BASE, OTHER, ...), each run on a fresh database,
with PYTHONPATH choosing the tree; OTHER defaults to the working tree of this checkout,
uncommitted changes included. Both trees run in this checkout's virtual environment, so the
commits must share its dependencies. Prints each run's figures, the medians, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_all import AMQP, DATABASE, ensure_database  # noqa: E402

# What "add apartment" is judged by; any dotted path into the script's JSON line may be named.
DEFAULT_FIGURES = (
    "add_apartment_1_client.latency_ms.p50",
    "add_apartment_20_clients.per_s",
    "add_apartment_20_clients.cpu_ms_per_request.total",
    "add_apartment_20_clients.cpu_ms_per_request.rabbitmq",
)


def figure(result: dict[str, Any], path: str) -> float | None:
    """The number at a dotted path of a result, or None where that commit's script has none."""
    value: Any = result
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def worktree(commit: str, parent: Path) -> Path:
    """A detached checkout of `commit`; removed by `drop`."""
    path = Path(tempfile.mkdtemp(prefix="ab-", dir=parent))
    path.rmdir()
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                    str(path), commit], check=True)
    return path


def drop(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                   check=False)


def run_once(tree: Path, script: str, args: list[str]) -> dict[str, Any]:
    ensure_database(DATABASE)
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_AMQP_URI": AMQP,
           "BENCH_DATABASE_URL": DATABASE}
    out = subprocess.run([sys.executable, str(tree / "bench" / script), *args], env=env,
                         cwd=tree, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: bench/{script} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare against")
    parser.add_argument("other", nargs="?", help="a commit (default: this working tree)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--script", default="gateway_latency.py")
    parser.add_argument("--figure", action="append", dest="figures",
                        help="a dotted path into the script's JSON (repeatable)")
    parser.add_argument("--args", default="300", help="the script's arguments, one string")
    options = parser.parse_args()
    # Stopped with SIGTERM, it still removes its worktrees (the `finally` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures = options.figures or list(DEFAULT_FIGURES)
    parent = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    trees = {"base": worktree(options.base, parent)}
    trees["other"] = worktree(options.other, parent) if options.other else ROOT
    labels = {"base": options.base, "other": options.other or "working tree"}
    results: dict[str, list[dict[str, Any]]] = {"base": [], "other": []}
    try:
        for pair in range(options.pairs):
            for side in ("base", "other"):
                print(f"pair {pair + 1}: {labels[side]}", file=sys.stderr, flush=True)
                results[side].append(
                    run_once(trees[side], options.script, options.args.split()))
    finally:
        for tree in trees.values():
            if tree != ROOT:
                drop(tree)
    width = max(len(f) for f in figures)
    print(f"{'figure'.ljust(width)}  {labels['base']} (runs; median)  |  "
          f"{labels['other']} (runs; median)")
    medians: dict[str, dict[str, float | None]] = {"base": {}, "other": {}}
    for path in figures:
        cells = []
        for side in ("base", "other"):
            values = [v for v in (figure(r, path) for r in results[side]) if v is not None]
            median = round(statistics.median(values), 2) if values else None
            medians[side][path] = median
            cells.append(f"{' / '.join(f'{v:g}' for v in values) or '-'}; {median}")
        print(f"{path.ljust(width)}  {cells[0]}  |  {cells[1]}")
    print(json.dumps({"base": labels["base"], "other": labels["other"], "medians": medians,
                      "runs": results}))


if __name__ == "__main__":
    main()
