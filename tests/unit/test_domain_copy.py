"""The chassis Aggregate's copy: what the repository hands out must share nothing mutable."""

from __future__ import annotations

import copy
from uuid import UUID, uuid4

from concierge.domain import Aggregate


class Register(Aggregate):
    def __init__(self) -> None:
        self.numbers: dict[str, UUID] = {}
        self.floors: dict[str, list[int]] = {}
        self.tags: set[str] = set()


def test_a_copy_shares_no_dict_list_or_set_with_its_original() -> None:
    original = Register()
    original.numbers = {str(n): uuid4() for n in range(1000)}  # scalars only: the fast path
    original.floors = {"A": [1, 2]}
    original.tags = {"x"}

    clone = copy.deepcopy(original)
    clone.numbers["1000"] = uuid4()
    clone.floors["A"].append(3)
    clone.tags.add("y")

    assert len(original.numbers) == 1000 and "1000" not in original.numbers
    assert clone.numbers["1"] == original.numbers["1"]
    assert original.floors == {"A": [1, 2]}
    assert original.tags == {"x"}
    assert (clone.id, clone.version) == (original.id, original.version)
