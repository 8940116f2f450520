"""The Sites counts, kept by the projection: after every event, in any interleaving of the two
sources, they equal a recount of what both sources have said so far, and the rows left at the
end are the same whichever source spoke first (a rebuild reads them in another order)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Connection

from concierge.projection import Rows
from services.topology.projections import (
    ResidentsView,
    SitesView,
    apartment_totals,
    apartments,
    app_accounts,
    community_counts,
    residents_metadata,
    sites_metadata,
)

COMMUNITY = "c-1"
Event = tuple[str, str, str, dict[str, Any]]  # source, type, stream id, data


def topology_events(apartment: str, deleted: bool) -> list[Event]:
    ids = {"community_id": COMMUNITY, "installer_id": "i-1", "building_id": "b-1"}
    events: list[Event] = [("topology", "ApartmentAdded", apartment, ids),
                           ("topology", "ResidentAdded", apartment, ids)]
    if deleted:
        events.append(("topology", "ApartmentDeleted", apartment, ids))
    return events


def accounts_events(apartment: str, plan: dict[str, Any]) -> list[Event]:
    account = f"m-{apartment}"
    events: list[Event] = [("accounts", "MasterAccountCreated", account,
                            {"community_id": COMMUNITY, "apartment_id": apartment})]
    if plan["registered"]:
        events.append(("accounts", "MasterAccountRegistered", account, {}))
    members = [f"{account}-f{i}" for i in range(plan["family"])]
    for member in members:
        events.append(("accounts", "FamilyMemberAdded", account, {"family_member_id": member}))
    if plan["reset"]:
        events.append(("accounts", "MasterAccountReset", account,
                       {"removed_family_member_ids": members}))
    if plan["closed"]:
        events.append(("accounts", "MasterAccountClosed", account,
                       {"removed_family_member_ids": [] if plan["reset"] else members}))
    return events


def recount(said: list[Event]) -> dict[str, int]:
    """What the counts must be after these events: from each APT's state, as the manual
    counts (end users are the APT's resident and the family members of APTs that exist)."""
    state: dict[str, dict[str, Any]] = {}
    for _source, kind, stream, data in said:
        apartment = stream if not stream.startswith("m-") else stream[2:]
        apt = state.setdefault(apartment, {"alive": False, "resident": False, "family": 0,
                                           "registered": False})
        if kind == "ApartmentAdded":
            apt["alive"] = True
        elif kind == "ResidentAdded":
            apt["resident"] = True
        elif kind == "ApartmentDeleted":
            apt.update(alive=False, resident=False)
        elif kind == "MasterAccountRegistered":
            apt["registered"] = True
        elif kind == "FamilyMemberAdded":
            apt["family"] += 1
        elif kind == "MasterAccountReset":
            apt["family"] -= len(data["removed_family_member_ids"])
            apt["registered"] = False
        elif kind == "MasterAccountClosed":
            apt.update(family=0, registered=False)
    alive = [apt for apt in state.values() if apt["alive"]]
    return {"apartments": len(alive),
            "residents": sum(int(apt["resident"]) + apt["family"] for apt in alive),
            "registered": sum(int(apt["registered"]) for apt in alive)}


def interleave(first: list[Event], second: list[Event], picks: list[bool]) -> Iterator[Event]:
    i = j = 0
    for pick in picks:
        if pick and i < len(first):
            yield first[i]
            i += 1
        elif j < len(second):
            yield second[j]
            j += 1
    yield from first[i:]
    yield from second[j:]


def kept(conn: Connection) -> dict[str, int]:
    row = conn.execute(select(community_counts).where(
        community_counts.c.community_id == COMMUNITY)).first()
    if row is None:
        return {"apartments": 0, "residents": 0, "registered": 0}
    return {"apartments": row.apartments, "residents": row.residents,
            "registered": row.registered}


def every_row(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {table.name: sorted(tuple(r) for r in conn.execute(select(table)))
            for table in sites_metadata.sorted_tables}


PLANS = st.fixed_dictionaries({
    "deleted": st.booleans(), "registered": st.booleans(), "family": st.integers(0, 3),
    "reset": st.booleans(), "closed": st.booleans()})


def envelope(event: Event) -> dict[str, Any]:
    source, kind, stream, data = event
    return {"source": source, "type": kind, "stream_id": stream, "data": data,
            "occurred_at": "2026-12-07T00:00:00.000000+00:00"}


def feed(conn: Connection, view: Any, events: list[Event], batch: int,
         check: Callable[[int], None]) -> None:
    """Apply the events in units of `batch` (their rows prefetched, as a service's batches
    are), calling `check(applied so far)` after each unit."""
    handlers = view.handlers()
    for start in range(0, len(events), batch):
        rows = Rows(conn)
        chunk = [envelope(e) for e in events[start:start + batch]]
        view.prefetch(rows, chunk)
        for env in chunk:
            handler = handlers[env["source"]].get(env["type"])
            if handler is not None:
                handler(rows, env)
        rows.flush()
        check(start + len(chunk))


def play(events: list[Event], batch: int = 1) -> dict[str, list[tuple[Any, ...]]]:
    """Apply the events to the Sites model, checking the counts after each unit against a
    recount of what was said so far; return the rows left."""
    engine = create_engine("sqlite://")
    sites_metadata.create_all(engine)
    with engine.begin() as conn:
        feed(conn, SitesView(), events, batch,
             lambda n: _same(kept(conn), recount(events[:n]), events[:n]))
        return every_row(conn)


def _same(found: Any, expected: Any, context: Any) -> None:
    assert found == expected, context


@settings(max_examples=150, deadline=None)
@given(plans=st.lists(PLANS, min_size=1, max_size=3), picks=st.lists(st.booleans(),
                                                                        max_size=40),
       batch=st.integers(1, 7))
def test_the_kept_counts_are_a_recount_after_every_event_in_any_interleaving(
        plans: list[dict[str, Any]], picks: list[bool], batch: int) -> None:
    topology = [e for n, p in enumerate(plans) for e in topology_events(f"a{n}", p["deleted"])]
    accounts = [e for n, p in enumerate(plans) for e in accounts_events(f"a{n}", p)]
    mixed = list(interleave(topology, accounts, picks))
    left = play(mixed, batch)
    # A rebuild reads one source, then the other: the same rows, in either order.
    assert play(topology + accounts, batch=5) == left
    assert play(accounts + topology, batch=3) == left


def test_a_deleted_apartment_whose_account_is_closed_leaves_no_row() -> None:
    plan = {"deleted": True, "registered": True, "family": 2, "reset": False, "closed": True}
    left = play(topology_events("a0", True) + accounts_events("a0", plan))
    assert left["topology_site_apartments"] == []
    assert left["topology_site_accounts"] == []


def play_residents(events: list[Event], batch: int) -> dict[str, list[tuple[Any, ...]]]:
    """The Residents model fed the same way; after each unit, its kept totals are recounts
    of its rows (APTs, and APTs whose app is registered)."""
    engine = create_engine("sqlite://")
    residents_metadata.create_all(engine)

    def check(_applied: int) -> None:
        kept_totals = dict(conn.execute(select(apartment_totals)).tuples().all())
        listed = conn.execute(select(apartments.c.registered)).scalars().all()
        assert kept_totals.get(COMMUNITY, 0) == len(listed)
        assert kept_totals.get(f"{COMMUNITY}/registered", 0) == sum(listed)

    with engine.begin() as conn:
        feed(conn, ResidentsView(), events, batch, check)
        # The flag is the app account's status, whichever came first.
        statuses = dict(conn.execute(select(app_accounts.c.apartment_id,
                                            app_accounts.c.app_status)).tuples().all())
        for apartment_id, registered in conn.execute(select(apartments.c.id,
                                                            apartments.c.registered)):
            assert registered == (statuses.get(apartment_id) == "registered")
        return {table.name: sorted(tuple(r) for r in conn.execute(select(table)))
                for table in residents_metadata.sorted_tables}


def with_apartment_fields(events: list[Event]) -> list[Event]:
    return [(source, kind, stream, {**data, "number": stream[1:] or "1"}
             if kind == "ApartmentAdded" else data)
            for source, kind, stream, data in events]


@settings(max_examples=100, deadline=None)
@given(plans=st.lists(PLANS, min_size=1, max_size=3), picks=st.lists(st.booleans(),
                                                                        max_size=40),
       batch=st.integers(1, 7))
def test_the_residents_registered_flag_and_totals_hold_in_any_interleaving(
        plans: list[dict[str, Any]], picks: list[bool], batch: int) -> None:
    topology = with_apartment_fields(
        [e for n, p in enumerate(plans) for e in topology_events(f"a{n}", p["deleted"])])
    accounts = [e for n, p in enumerate(plans) for e in accounts_events(f"a{n}", p)]
    left = play_residents(list(interleave(topology, accounts, picks)), batch)
    assert play_residents(topology + accounts, 4) == left
    assert play_residents(accounts + topology, 2) == left
