"""Topology's read-model helpers: values written the same whatever form the event gave."""

from __future__ import annotations

import datetime as dt

from services.topology.projections import _instant


def _slow(value: object) -> str:
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


BRASILIA = dt.timezone(dt.timedelta(hours=-3))


def test_an_instant_already_in_the_read_models_form_is_kept_and_others_are_converted() -> None:
    stored = dt.datetime(2026, 11, 25, 4, 40, 5, 739675, tzinfo=dt.UTC).isoformat()
    assert _instant(stored) == stored == _slow(stored)
    for value in ("2026-11-25T04:40:05+00:00",  # no microseconds: the library omits zeros
                  "2026-11-25T05:40:05.739675+01:00",
                  "2026-11-25T04:40:05.739675",
                  dt.datetime(2026, 11, 25, 4, 40, 5, tzinfo=dt.UTC),
                  dt.datetime(2026, 11, 25, 4, 40, 5, 1, tzinfo=BRASILIA)):
        assert _instant(value) == _slow(value)
        assert len(_instant(value) or "") == 32 and (_instant(value) or "").endswith("+00:00")
    assert _instant(None) is None and _instant("") is None
