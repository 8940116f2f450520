"""Gateway command latency for "add apartment", at 1 and at 20 concurrent clients.

Each service runs in its own process on RabbitMQ and PostgreSQL, as in production; the clients are
threads of this process using keep-alive HTTP connections. Each added apartment has a resident
with an email, so the whole chain (master account, activation email) runs behind it.
Prints one JSON line. Environment: BENCH_AMQP_URI, BENCH_DATABASE_URL, BENCH_PORT.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.cluster import Platform
from bench.stats import summary


def add_apartments(port: int, token: str, building: str, prefix: int, count: int,
                   latencies: list[float], statuses: Counter[int] | None = None) -> None:
    """Every answer must be 201, or, with `statuses`, each answer's status is counted."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    for i in range(count):
        number = f"{prefix}{i:04d}"
        body = json.dumps({"number": number, "floor": 1, "name": f"APT {number}",
                           "resident": {"first_name": "Bench", "last_name": f"R{number}",
                                        "email": f"r{number}@example.org"}})
        start = time.perf_counter()
        conn.request("POST", f"/api/v1/buildings/{building}/apartments", body, headers)
        response = conn.getresponse()
        response.read()
        elapsed = (time.perf_counter() - start) * 1000
        if statuses is not None:
            statuses[response.status] += 1
        elif response.status != 201:
            raise RuntimeError(f"add apartment answered {response.status}")
        latencies.append(elapsed)
    conn.close()


def run(clients: int, per_client: int, port: int, token: str, building: str,
        base: int, platform: Platform | None = None,
        statuses: Counter[int] | None = None) -> dict[str, object]:
    latencies: list[float] = []
    threads = [threading.Thread(target=add_apartments,
                                args=(port, token, building, base + c, per_client, latencies,
                                      statuses))
               for c in range(clients)]
    cpu_before = platform.cpu_seconds() if platform else {}
    emails_before = platform.emails_delivered() if platform else 0
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    result: dict[str, object] = {"clients": clients, "requests": len(latencies),
                                 "per_s": round(len(latencies) / elapsed, 1),
                                 "latency_ms": summary(latencies)}
    if platform:
        # CPU milliseconds per request, by process, while the requests ran.
        after = platform.cpu_seconds()
        result["cpu_ms_per_request"] = per_request(cpu_before, after, len(latencies))
        # The work behind the answers (master account, activation email) may finish later:
        # wait for the last email, and give the rate and CPU of the whole chain too.
        deadline = time.monotonic() + 120
        while (platform.emails_delivered() - emails_before < len(latencies)
               and time.monotonic() < deadline):
            time.sleep(0.005)
        drained = time.perf_counter() - start
        delivered = platform.emails_delivered() - emails_before
        if delivered < len(latencies):
            raise RuntimeError(f"only {delivered} of {len(latencies)} emails were sent")
        result["chain_per_s"] = round(len(latencies) / drained, 1)
        result["last_email_after_s"] = round(drained, 2)
        result["cpu_ms_per_request_whole_chain"] = per_request(
            cpu_before, platform.cpu_seconds(), len(latencies))
    return result


def per_request(before: dict[str, float], after: dict[str, float],
                requests: int) -> dict[str, float]:
    """CPU milliseconds per request, by process, and their total."""
    figures = {name: round((after[name] - before.get(name, 0.0)) * 1000 / requests, 2)
               for name in after}
    figures["total"] = round(sum(figures.values()), 2)
    return figures


def platform_with(services: tuple[str, ...] | None) -> Platform:
    """Every context once (None), or these services (one named twice runs twice)."""
    port = int(os.environ.get("BENCH_PORT", "8811"))
    return Platform(os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"),
                    os.environ.get("BENCH_DATABASE_URL", ""),
                    Path(tempfile.mkdtemp(prefix="bench-gw-")), port, services=services).start()


def site(platform: Platform, token: str, names: tuple[str, ...]) -> list[str]:
    """A community with these buildings; their ids."""
    status, community = platform.call("POST", "/api/v1/communities",
                                      {"name": "Bench Towers", "feature_plan": "premium",
                                       "time_zone": "Europe/Paris"}, token)
    assert status == 201, community
    buildings = []
    for name in names:
        status, building = platform.call(
            "POST", f"/api/v1/communities/{community['id']}/buildings", {"name": name}, token)
        assert status == 201, building
        buildings.append(building["id"])
    return buildings


def main() -> None:
    platform = platform_with(None)
    try:
        token = platform.installer_session()
        buildings = site(platform, token, ("A", "B"))
        run(1, 30, platform.port, token, buildings[0], 10)  # warm-up
        one = run(1, int(sys.argv[1]) if len(sys.argv) > 1 else 300, platform.port, token,
                  buildings[0], 20, platform)
        twenty = run(20, 50, platform.port, token, buildings[1], 30, platform)
    finally:
        platform.stop()
    # The same 20 clients on two topology replicas, all in one building: every command of
    # one replica races the other's on that building, so this shows what coordination
    # costs (retries of lost races inside the service); on 2 cores a replica adds no CPU.
    platform = platform_with(("accounts", "topology", "topology", "notify", "gateway"))
    statuses: Counter[int] = Counter()
    try:
        token = platform.installer_session()
        warm, building = site(platform, token, ("A", "B"))
        run(1, 30, platform.port, token, warm, 10)  # warm-up
        replicas = run(20, 50, platform.port, token, building, 30, platform, statuses)
        replicas["statuses"] = {str(code): count for code, count in sorted(statuses.items())}
    finally:
        platform.stop()
    print(json.dumps({"add_apartment_1_client": one, "add_apartment_20_clients": twenty,
                      "add_apartment_20_clients_2_topology_replicas": replicas}))


if __name__ == "__main__":
    main()
