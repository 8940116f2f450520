"""Every non-public name of eventsourcing and SQLAlchemy the chassis uses is still there, with
the parameters the chassis passes (`concierge.library.SURFACE`). An upgrade that changes one
fails here, naming it, rather than deep inside a commit."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from concierge import library

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("private", library.SURFACE, ids=lambda p: p.describe())
def test_each_private_name_the_chassis_uses_is_as_expected(private: library.Private) -> None:
    found = inspect.getattr_static(private.owner, private.name, None)
    assert found is not None, (
        f"{private.describe()} is gone from the installed library; used by {private.used_by}")
    if private.parameters is None:
        return
    assert callable(found), f"{private.describe()} is no longer a method"
    names = tuple(inspect.signature(found).parameters)[1:]  # after self
    assert names == private.parameters, (
        f"{private.describe()} now takes ({', '.join(names)}); used by {private.used_by}")


def test_a_changed_method_is_named_in_the_failure() -> None:
    moved = library.Private(library.Repository, "_use_fastforward_lock", ("other",), "a test")
    found = inspect.getattr_static(moved.owner, moved.name)
    names = tuple(inspect.signature(found).parameters)[1:]
    assert names != moved.parameters
    assert "Repository._use_fastforward_lock(other)" in moved.describe()


def test_no_other_chassis_module_reaches_into_the_libraries_privately() -> None:
    """Calls of the listed names go through `concierge.library`; only the recorders that
    override the library's hooks (and the application's `_record`, commit.py) name them
    elsewhere."""
    names = {p.name for p in library.SURFACE}
    overriders = {"pgrecorder.py", "sqliterecorder.py", "commit.py"}
    offenders = []
    for path in sorted((ROOT / "concierge").glob("*.py")):
        if path.name == "library.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in names:
                if not re.search(rf"\.{name}\b", line):
                    continue
                allowed = path.name in overriders and (
                    re.search(rf"(self|super\(\))\.{name}\(", line) is not None)
                if not allowed:
                    offenders.append(f"concierge/{path.name}:{number}: {line.strip()}")
    assert offenders == []
