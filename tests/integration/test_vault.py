"""The vault on both stores: a sealed value opens only with its subject's key, and after the key
is shredded every copy of it opens to nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from concierge.config import Settings
from concierge.database import service_engine
from concierge.vault import Vault, is_sealed


@pytest.fixture(params=["sqlite", "postgres"])
def vault(request: pytest.FixtureRequest, data_dir: Path, schema_prefix: str) -> Vault:
    database = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    settings = Settings(data_dir=data_dir, database_url=database, schema_prefix=schema_prefix)
    settings.service_dir("accounts").mkdir(parents=True, exist_ok=True)
    return Vault(service_engine("accounts", settings))


def test_a_sealed_value_opens_with_its_subject_until_shredded(vault: Vault) -> None:
    sealed = vault.seal("person:1", "lily@example.com")
    assert is_sealed(sealed) and "lily" not in sealed
    assert vault.open("person:1", sealed) == "lily@example.com"
    assert vault.seal("person:1", "lily@example.com") != sealed  # a fresh nonce each time
    assert vault.open("person:2", sealed) is None  # another subject's key does not open it
    vault.seal("person:2", "x")
    assert vault.open("person:2", sealed) is None
    assert vault.shred(["person:1"]) == 1
    assert vault.open("person:1", sealed) is None
    assert not vault.has("person:1") and vault.has("person:2")
    # A new key for a shredded subject does not bring the old value back.
    vault.seal("person:1", "new tenant")
    assert vault.open("person:1", sealed) is None


def test_anything_but_a_sealed_value_opens_to_nothing(vault: Vault) -> None:
    vault.seal("s", "v")
    for junk in (None, "", "plain", "sealed:v1:", "sealed:v1:!!!", "sealed:v1:AAAA"):
        assert vault.open("s", junk) is None


def test_replicas_sealing_for_one_new_subject_share_its_key(vault: Vault) -> None:
    sealed: list[str] = []
    errors: list[BaseException] = []

    def seal(n: int) -> None:
        try:
            sealed.append(vault.seal("shared", f"value {n}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=seal, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(vault.open("shared", s) or "" for s in sealed) == [f"value {n}"
                                                                      for n in range(8)]
