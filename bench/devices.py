"""Devices through the gateway: registering 10,000 MACs by CSV, and adding devices at 20 clients.

Each service runs in its own process on RabbitMQ and PostgreSQL, as in production; the clients
are threads of this process on keep-alive HTTP connections. Baselines measured in the same run:
the same 10,000 rows written by one raw `INSERT ... SELECT unnest` into a table of their own (what
the database alone costs), and a key lookup (GET one device) through the gateway at 20 clients
(what the hops alone cost).
Prints one JSON line. Usage: python bench/devices.py [MACS] [DEVICES_PER_CLIENT]
Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL, BENCH_PORT.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import Platform
from bench.stats import summary

CLIENTS = 20


def mac_of(n: int) -> str:
    return f"0C11{n:08X}"


def raw_insert_seconds(database_url: str, count: int) -> float:
    """The database alone: `count` MAC rows in one statement, as a baseline."""
    import psycopg

    macs = [mac_of(n) for n in range(count)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        table = f"bench_raw_macs_{uuid.uuid4().hex[:6]}"
        conn.execute(f"CREATE TABLE {table} (mac text PRIMARY KEY, installer_id text)")
        try:
            start = time.perf_counter()
            with conn.transaction():
                conn.execute(f"INSERT INTO {table} SELECT unnest(%s::text[]), %s",
                             (macs, str(uuid.uuid4())))
            return time.perf_counter() - start
        finally:
            conn.execute(f"DROP TABLE {table}")


def clients(port: int, token: str, work: Callable[[http.client.HTTPConnection, dict[str, str],
                                                   int, list[float]], None]
            ) -> tuple[float, list[float]]:
    """Run `work(conn, headers, client, latencies)` on CLIENTS threads: seconds, latencies."""
    latencies: list[float] = []
    errors: list[BaseException] = []

    def one(client: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        try:
            work(conn, headers, client, latencies)
        except BaseException as exc:  # reported after the run
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(c,)) for c in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start, latencies


def timed_request(conn: http.client.HTTPConnection, method: str, path: str, body: Any,
                  headers: dict[str, str], expected: int, latencies: list[float]) -> Any:
    start = time.perf_counter()
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    response = conn.getresponse()
    raw = response.read()
    latencies.append((time.perf_counter() - start) * 1000)
    if response.status != expected:
        raise RuntimeError(f"{method} {path} answered {response.status}: {raw[:300]!r}")
    return json.loads(raw) if raw else None


def main() -> None:
    macs = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    per_client = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    amqp = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    database = os.environ.get("BENCH_DATABASE_URL", "")
    port = int(os.environ.get("BENCH_PORT", "8813"))
    platform = Platform(amqp, database, Path(tempfile.mkdtemp(prefix="bench-devices-")), port,
                        services=("accounts", "topology", "devices", "gateway")).start()
    try:
        distributor = platform.distributor_token()
        name = f"devbench{uuid.uuid4().hex[:6]}"
        status, installer = platform.call("POST", "/api/v1/installers",
                                          {"username": name, "password": "installer-pw-1",
                                           "email": f"{name}@example.org"}, distributor)
        assert status == 201, installer
        _, session = platform.call("POST", "/api/v1/auth/login",
                                   {"username": name, "password": "installer-pw-1"})
        token = session["token"]
        _, building = platform.community_with_building(token, "Device Towers")

        csv = "MAC\n" + "\n".join(mac_of(n) for n in range(macs))
        start = time.perf_counter()
        status, report = platform.call("POST",
                                       f"/api/v1/installers/{installer['id']}/mac-library/import",
                                       {"csv": csv}, distributor)
        import_s = time.perf_counter() - start
        assert status == 200 and report["added"] == macs, (status, str(report)[:300])
        raw_s = raw_insert_seconds(database, macs) if database else None

        def add(conn: http.client.HTTPConnection, headers: dict[str, str], client: int,
                latencies: list[float]) -> None:
            for i in range(per_client):
                n = client * per_client + i
                timed_request(conn, "POST", f"/api/v1/buildings/{building}/devices",
                              {"type": 0, "mac": mac_of(n), "name": f"Door {n}"}, headers,
                              201, latencies)

        # A first device warms each process's caches; it is not counted.
        status, first = platform.call("POST", f"/api/v1/buildings/{building}/devices",
                                      {"type": 0, "mac": mac_of(macs - 1), "name": "Warm"},
                                      token)
        assert status == 201, first
        cpu_before = platform.cpu_seconds()
        with platform.profiled("add-device"):
            add_s, add_ms = clients(port, token, add)
        added = CLIENTS * per_client
        cpu_after = platform.cpu_seconds()
        cpu_ms = {name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / added, 2)
                  for name in cpu_after}

        def get(conn: http.client.HTTPConnection, headers: dict[str, str], client: int,
                latencies: list[float]) -> None:
            for _ in range(per_client):
                timed_request(conn, "GET", f"/api/v1/devices/{first['id']}", None, headers,
                              200, latencies)

        get_s, get_ms = clients(port, token, get)
        print(json.dumps({
            "macs": macs,
            "mac_import_s": round(import_s, 2),
            "mac_raw_insert_s": round(raw_s, 3) if raw_s is not None else None,
            "devices_added": added,
            "add_devices_per_s": round(added / add_s, 1),
            "add_device_ms": summary(add_ms),
            "add_device_cpu_ms_per_request": cpu_ms,
            "get_device_per_s": round(added / get_s, 1),
            "get_device_ms": summary(get_ms),
            "clients": CLIENTS,
        }))
    finally:
        platform.stop()


if __name__ == "__main__":
    main()
