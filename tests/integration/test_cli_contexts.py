"""The operator commands take their list of contexts from the declarations."""

from __future__ import annotations

from pathlib import Path

import pytest

from concierge import cli
from concierge.contexts import stored_contexts


def test_migrate_without_a_name_migrates_every_context_with_a_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONCIERGE_DATA_DIR", str(tmp_path))
    for name in ("AMQP_URI", "CONCIERGE_DATABASE_URL", "CONCIERGE_DEPLOYMENT"):
        monkeypatch.delenv(name, raising=False)

    assert cli.main(["migrate"]) == 0

    assert capsys.readouterr().out.splitlines() == [
        f"{name}: store and read models are in place" for name in stored_contexts()]
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "events.sqlite3").exists()) == [
        "accounts", "devices", "notify", "topology"]
