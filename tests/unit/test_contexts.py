"""Contexts are found from their declarations alone: adding one adds a package and edits no
chassis file (`concierge.contexts`, docs/new-context.md)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from concierge import cli
from concierge.contexts import BoundedContext, contexts, stored_contexts


def test_the_platform_s_contexts_are_found_stored_ones_first() -> None:
    assert list(contexts()) == ["accounts", "devices", "notify", "topology", "gateway"]
    assert stored_contexts() == ["accounts", "devices", "notify", "topology"]
    assert all(isinstance(c, BoundedContext) for c in contexts().values())
    assert contexts()["topology"].service_class().name == "topology"


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """An importable package of contexts of its own, removed afterwards."""
    root = tmp_path / "more_services"
    root.mkdir()
    (root / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    yield root
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("more_services")]:
        del sys.modules[name]
    contexts.cache_clear()


def add_context(root: Path, folder: str, name: str, stored: bool) -> None:
    (root / folder).mkdir()
    (root / folder / "__init__.py").write_text("")
    (root / folder / "declaration.py").write_text(textwrap.dedent(f"""
        from concierge.contexts import BoundedContext
        from concierge.store import ServiceApplication

        class App(ServiceApplication):
            service_name = {name!r}

        CONTEXT = BoundedContext(name={name!r}, service="x:Y",
                                 application=App if {stored} else None)
    """))


def test_a_new_context_is_found_from_its_package_alone(package: Path) -> None:
    add_context(package, "firmware", "firmware", stored=True)
    add_context(package, "portal", "portal", stored=False)
    (package / "helpers").mkdir()  # a package without a declaration is no context
    (package / "helpers" / "__init__.py").write_text("")

    found = contexts("more_services")

    assert list(found) == ["firmware", "portal"]
    assert stored_contexts("more_services") == ["firmware"]


def test_a_declaration_named_unlike_its_package_is_refused(package: Path) -> None:
    add_context(package, "firmware", "billing", stored=True)

    with pytest.raises(TypeError, match="named 'firmware'"):
        contexts("more_services")


def test_the_cli_lists_the_contexts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["contexts"]) == 0
    assert capsys.readouterr().out.split() == [
        "accounts", "devices", "notify", "topology", "gateway"]
    assert cli.main(["contexts", "--stored"]) == 0
    assert capsys.readouterr().out.split() == ["accounts", "devices", "notify", "topology"]


def test_operator_commands_accept_only_contexts_with_a_store() -> None:
    with pytest.raises(SystemExit):
        cli.main(["events", "gateway"])

