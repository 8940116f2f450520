"""Login at argon2's production cost, on one core, beside a raw argon2 verify in the same run.

The baseline: argon2-cffi's `PasswordHasher()` with its defaults (the production cost, what
`Credentials()` uses) verifying a correct password, nothing else. The platform: accounts'
application wired on its store (BENCH_DATABASE_URL: PostgreSQL; empty = SQLite in a temporary
data folder) with `Credentials()`, the distributor bootstrapped and one installer created by it;
then `app.login(username, password)` from one thread, as the service's RPC entrypoint calls it
(the hash in an OS thread through the service's throttle, the session recorded in a commit).
Beside the good login: a wrong password and an unknown username, which must cost about the same
(an unknown username spends a verify of a decoy hash), since timing must not tell them apart.

While timing, every thread of this process is pinned to one CPU (argon2 runs its four lanes in
threads of its own; they inherit it), so "per second" is on one core; the database server, when
it is PostgreSQL, is not pinned. The four kinds run interleaved, round after round, so the
machine's drift falls on each alike; a rate is the count over the summed time of its calls.
Prints one JSON line. Usage: python bench/login.py [LOGINS]   (default 60 of each kind)
Environment: BENCH_DATABASE_URL (PostgreSQL; empty = SQLite).
"""

from __future__ import annotations

from concierge import green

green.patch()

import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import argon2  # noqa: E402

from bench.rebuild_rate import drop_schemas  # noqa: E402
from bench.stats import summary  # noqa: E402
from concierge import context, heap  # noqa: E402
from concierge.config import Settings  # noqa: E402
from contracts.errors import Unauthorized  # noqa: E402
from services.accounts.declaration import CONTEXT as ACCOUNTS  # noqa: E402
from services.accounts.domain import PortalAccount  # noqa: E402
from services.accounts.security import Credentials  # noqa: E402

DISTRIBUTOR = ("bench-distributor", "bench-distributor-pw")
INSTALLER = ("bench-installer", "bench-installer-password", "installer@example.org")
# The three logins' p50s may differ by this share at most: timing must not tell them apart.
SPREAD_LIMIT = 0.10
KINDS = ("raw_verify", "login_good", "login_wrong_password", "login_unknown_username")


def threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def pin(cpus: set[int]) -> None:
    """Every thread of this process on `cpus` (sched_setaffinity(0) moves the calling thread
    only, and the OS threads that run the hashes were started before); threads started
    afterwards inherit it from the thread that starts them."""
    for tid in threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


def affinities() -> set[frozenset[int]]:
    found = set()
    for tid in threads():
        with contextlib.suppress(ProcessLookupError):
            found.add(frozenset(os.sched_getaffinity(tid)))
    return found


def parameters(password_hash: str) -> dict[str, Any]:
    found = argon2.extract_parameters(password_hash)
    return {"type": found.type.name.lower(), "time_cost": found.time_cost,
            "memory_cost_kib": found.memory_cost, "parallelism": found.parallelism}


def refused(call: Callable[[int], Any]) -> Callable[[int], None]:
    """A login that must fail as a wrong login does (a lockout would fail the run instead)."""
    def attempt(n: int) -> None:
        try:
            call(n)
        except Unauthorized:
            return
        raise AssertionError("a login that should fail succeeded")
    return attempt


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-login-")),
                        database_url=os.environ.get("BENCH_DATABASE_URL", ""),
                        schema_prefix=f"bench{uuid.uuid4().hex[:6]}_",
                        bootstrap_distributor=":".join(DISTRIBUTOR))
    wiring = ACCOUNTS.wire(settings, credentials=Credentials())
    try:
        app = wiring.app
        distributor_id = str(PortalAccount.id_for_username(DISTRIBUTOR[0]))
        with context.acting({"actor": f"distributor:{DISTRIBUTOR[0]}", "role": "distributor"}):
            installer_id = app.create_installer(
                {"username": INSTALLER[0], "password": INSTALLER[1], "email": INSTALLER[2]},
                distributor_id=distributor_id)
        stored = app.repository.get(uuid.UUID(installer_id)).password_hash
        production = argon2.PasswordHasher()  # the library's defaults: the production cost
        raw_hash = production.hash(INSTALLER[1])
        cost = parameters(stored)
        # The platform's hash is made at the cost the baseline verifies.
        assert cost == parameters(raw_hash), cost
        username, password = INSTALLER[:2]

        def good_password(n: int) -> None:
            app.login(username, password)

        def wrong_password(n: int) -> None:
            app.login(username, password + "!")

        def unknown_username(n: int) -> None:  # one of its own each round, as the addresses
            app.login(f"bench-nobody-{n}", password)

        calls: dict[str, Callable[[int], Any]] = {
            "raw_verify": lambda n: production.verify(raw_hash, password),
            "login_good": good_password, "login_wrong_password": refused(wrong_password),
            "login_unknown_username": refused(unknown_username),
        }
        heap.settle()  # as a service does at start
        before = os.sched_getaffinity(0)
        cpu = max(before)
        samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
        pin({cpu})
        try:
            pinned = affinities() == {frozenset({cpu})}
            for n in range(count + 1):  # round 0 warms: the first login compiles its queries
                order = KINDS[n % len(KINDS):] + KINDS[:n % len(KINDS)]
                # A login as the gateway passes it on, from a client's address: one of its own
                # each round. Failed logins are counted per username and address (a lockout)
                # and a benchmark is not a brute force: a round's two failures stay far below
                # any limit, and its good login forgets the username's count.
                with context.acting({"client_address": f"10.{n >> 16 & 255}.{n >> 8 & 255}."
                                                       f"{n & 255}"}):
                    for kind in order:
                        start = time.perf_counter()
                        calls[kind](n)
                        if n:
                            samples[kind].append((time.perf_counter() - start) * 1000)
        finally:
            pin(before)
        figures = {kind: summary(values) for kind, values in samples.items()}
        per_s = {kind: round(len(values) / (sum(values) / 1000), 2)
                 for kind, values in samples.items()}
        raw, good = figures["raw_verify"], figures["login_good"]
        p50s = [figures[k]["p50"] for k in KINDS[1:]]
        print(f"pinned to CPU {cpu} of {sorted(before)} (every thread: {pinned}); argon2 {cost}; "
              f"p50 ms raw verify {raw['p50']}, login good / wrong password / unknown username "
              f"{' / '.join(map(str, p50s))}", file=sys.stderr, flush=True)
        print(json.dumps({
            "logins": count, "cpu": cpu, "pinned_to_one_core": pinned,
            "cores_before": sorted(before), "argon2": cost,
            "store": "postgres" if settings.uses_postgres else "sqlite",
            "raw_verify_ms": raw, "raw_verifies_per_s": per_s["raw_verify"],
            "login_ms": good, "logins_per_s": per_s["login_good"],
            "login_vs_raw_p50": round(good["p50"] / raw["p50"], 3),
            "wrong_password_ms": figures["login_wrong_password"],
            "unknown_username_ms": figures["login_unknown_username"],
            "p50_good_wrong_unknown_ms": p50s,
            "p50_spread": round(max(p50s) / min(p50s) - 1, 3), "p50_spread_limit": SPREAD_LIMIT,
        }))
    finally:
        wiring.close()
        drop_schemas(settings)


if __name__ == "__main__":
    main()
