"""The collector's pace during a long run, and after it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from concierge import heap


@pytest.fixture
def default_pace() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_a_long_run_collects_at_the_settled_pace_and_the_old_pace_comes_back(
        default_pace: tuple[int, int, int]) -> None:
    with heap.collecting_less():
        assert gc.get_threshold() == heap.THRESHOLDS
    assert gc.get_threshold() == default_pace
    with pytest.raises(RuntimeError), heap.collecting_less():
        raise RuntimeError("a failed rebuild")
    assert gc.get_threshold() == default_pace


def test_a_slower_pace_already_set_is_kept(default_pace: tuple[int, int, int]) -> None:
    gc.set_threshold(50_000, 10, 100)
    with heap.collecting_less():
        assert gc.get_threshold() == (50_000, 20, 100)
    assert gc.get_threshold() == (50_000, 10, 100)
