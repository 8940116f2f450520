"""The platform end-to-end tests run against, in both ways of running it: the embedded default
(`concierge up`, one process, as `make run` starts it) and one process per service on RabbitMQ
and PostgreSQL. A module that needs another setup defines its own `platform` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.cluster import Platform
from tests.support.harness import free_port


@pytest.fixture(params=["embedded", "distributed"], scope="module")
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("e2e") / "var"
    if request.param == "embedded":
        running = Platform("", "", data_dir, free_port(), embedded=True)
    else:
        running = Platform(request.getfixturevalue("rabbit_uri"),
                           request.getfixturevalue("postgres_url"), data_dir, free_port())
    running.start()
    yield running
    running.stop()
