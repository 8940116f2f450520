"""Percentiles for the benchmark scripts."""

from __future__ import annotations


def percentile(samples: list[float], pct: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(samples, 50), 2),
        "p99": round(percentile(samples, 99), 2),
        "max": round(max(samples), 2) if samples else float("nan"),
        "n": len(samples),
    }
