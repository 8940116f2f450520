"""Every figure of the README in one run, each benchmark in its own process, with the targets.

Usage: make bench   (or: python bench/run_all.py)
Environment: BENCH_AMQP_URI (default local RabbitMQ), BENCH_DATABASE_URL (default the local
PostgreSQL database concierge_bench, created if missing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
DATABASE = os.environ.get("BENCH_DATABASE_URL",
                          "postgresql://postgres@127.0.0.1:5432/concierge_bench")


def ensure_database(url: str) -> None:
    """A fresh benchmark database each run: schemas left by earlier runs (tens of thousands of
    events each) make PostgreSQL slower and the figures drift."""
    import psycopg

    admin, _, name = url.rpartition("/")
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def run(script: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_AMQP_URI": AMQP,
           "BENCH_DATABASE_URL": DATABASE}
    print(f"running bench/{script} {' '.join(args)}", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"bench/{script} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


SCALE_READS = (
    ("apartment_get_baseline", None), ("residents_page_1", 50), ("residents_page_100", 50),
    ("residents_last_page", 50), ("residents_sort_name", 50),
    ("residents_sort_resident_desc", 50), ("residents_sort_created_last_page", 50),
    ("search_full_email", 50), ("search_name_prefix", 50), ("search_substring_many", 50),
    ("residents_registered_page_1", 50), ("residents_registered_last_page", 50),
    ("residents_unregistered_sort_name", 50),
    ("community_list", 30), ("dashboard", 30), ("add_apartment_1_client", None))


def scale_rows(scale: dict[str, Any], hop: dict[str, float]) -> list[tuple[str, Any, str]]:
    """Each read at every size side by side (p50 / p99 ms), through the application; the
    verdict is on the route at the largest size: the read's p99 plus the gateway hop's."""
    sizes = list(scale)
    largest = scale[sizes[-1]]
    rows: list[tuple[str, Any, str]] = []
    for name, target in SCALE_READS:
        figures = "  ".join(f"{scale[s][name]['p50']}/{scale[s][name]['p99']}" for s in sizes)
        if name == "add_apartment_1_client":
            route = largest[name]["p50"] + hop["p50"]
            note = verdict(route <= 15) + f" (route p50 {route:.1f} <= 15 ms)"
        elif target is None:
            note = "baseline: a key lookup"
        else:
            route = largest[name]["p99"] + hop["p99"]
            note = verdict(route <= target) + f" (route p99 {route:.1f} <= {target} ms)"
        rows.append((f"{name} at {', '.join(sizes)} APTs: p50/p99 ms", figures, note))
    first, last = scale[sizes[0]], largest
    share = last["add_apartment_8_clients_per_s"] / first["add_apartment_8_clients_per_s"]
    rows.append(("add apartment, 8 callers, at the largest size vs the smallest (per s)",
                 f"{last['add_apartment_8_clients_per_s']} vs "
                 f"{first['add_apartment_8_clients_per_s']} ({share:.0%})",
                 verdict(share >= 0.9) + " (>= 90%)"))
    rows.append((f"rebuild of topology's read models at {sizes[-1]} APTs (s)",
                 last["rebuild_s"], "no target; near 6.6 s is the issue's mark"))
    return rows


def spread_rows(spread: dict[str, Any], hop: dict[str, float]) -> list[tuple[str, Any, str]]:
    """The same APTs over 50 communities of one installer: the lists of one of them, the
    community list and the dashboard over all."""
    size, figures = next(iter(spread.items()))
    rows: list[tuple[str, Any, str]] = []
    for name, target in SCALE_READS:
        if target is None:
            continue
        value = figures[name]
        route = value["p99"] + hop["p99"]
        rows.append((f"{name}, {size} APTs in 50 communities: p50/p99 ms",
                     f"{value['p50']}/{value['p99']}",
                     verdict(route <= target) + f" (route p99 {route:.1f} <= {target} ms)"))
    return rows


def device_rows(devices: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Devices (issue #17): 10,000 MACs by CSV, devices added at 20 clients, with baselines."""
    add, get = devices["add_device_ms"], devices["get_device_ms"]
    return [
        (f"register {devices['macs']:,} MACs by CSV through the gateway (s)",
         devices["mac_import_s"], verdict(devices["mac_import_s"] < 10)),
        ("  ... the same rows in one raw INSERT (s)", devices["mac_raw_insert_s"], "baseline"),
        ("add device, 20 clients: req/s (p50 / p99 ms)",
         f"{devices['add_devices_per_s']} ({add['p50']} / {add['p99']})",
         verdict(devices["add_devices_per_s"] >= 250)),
        ("  ... CPU per request by process (ms)",
         ", ".join(f"{k} {v}" for k, v in devices["add_device_cpu_ms_per_request"].items()),
         "no target; where the time goes"),
        ("  ... GET one device, 20 clients: req/s (p50 / p99 ms)",
         f"{devices['get_device_per_s']} ({get['p50']} / {get['p99']})",
         "baseline: the hops alone"),
    ]


def traffic_rows(traffic: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Device traffic (issue #18): the ingest beside raw pika consuming the same messages."""
    return [
        (f"device traffic ingest, {traffic['messages']:,} messages of {traffic['devices']:,} "
         "devices (msg/s)", traffic["ingest_per_s"],
         f"{verdict(traffic['ingest_vs_raw'] >= traffic['target_ratio'])} "
         f"({traffic['ingest_vs_raw']} of raw, target {traffic['target_ratio']})"),
        ("  ... raw pika consume of the same messages (msg/s)",
         traffic["raw_pika_consume_per_s"], "baseline"),
        ("  ... devices' CPU per message (us)", traffic["devices_cpu_us_per_message"],
         "no target; where the time goes"),
        ("device gone silent -> DeviceWentOffline, p50 / p99 / max (s)",
         f"{traffic['offline_detection_s']['p50']} / {traffic['offline_detection_s']['p99']} / "
         f"{traffic['offline_detection_s']['max']}",
         verdict(traffic["offline_detection_s"]["max"] <= traffic["offline_target_s"])),
    ]


def fleet_rows(fleet: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """A large fleet heartbeating (issue #18): lag and the devices process's memory."""
    return [
        (f"{fleet['devices']:,} devices heartbeating every {fleet['interval_s']:g} s: backlog "
         "max, first minute / last minute", f"{fleet['backlog_first_minute_max']} / "
         f"{fleet['backlog_last_minute_max']}", verdict(not fleet["lag_grows"])),
        ("  ... devices' RSS before / max (MB)",
         f"{fleet['devices_rss_mb_before']} / {fleet['devices_rss_mb_max']}",
         verdict(fleet["devices_rss_mb_max"] <= fleet["rss_target_mb"])),
        ("  ... messages sent (msg/s, the publisher: what the fleet asks)",
         f"{fleet['sent']} ({fleet['publish_per_s']})", "baseline"),
    ]


def command_rows(commands: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Remote operations (issue #18): queued to succeeded through notify and a device."""
    trip, raw = commands["round_trip_ms"], commands["raw_pika_round_trip_ms"]
    stages = commands["stages_p50_ms"]
    return [
        (f"command round trip, {commands['commands']:,} reboots at {commands['rate_per_s']:g}/s "
         f"to {commands['devices']:,} devices: p50 / p99 (ms)", f"{trip['p50']} / {trip['p99']}",
         verdict(trip["p50"] <= commands["target_p50_ms"]
                 and trip["p99"] <= commands["target_p99_ms"])
         + f" (p50 <= {commands['target_p50_ms']:g}, p99 <= {commands['target_p99_ms']:g})"),
        ("  ... raw pika round trip, two hops, same pace: p50 / p99 (ms)",
         f"{raw['p50']} / {raw['p99']}", "baseline"),
        ("  ... p50 stages: relay + notify's policy / pusher / the device's ack to succeeded (ms)",
         f"{stages['relay_and_policy']} / {stages['pusher']} / {stages['ingest']}",
         "where the time goes"),
    ]


def login_rows(login: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Login at argon2's production cost (issue #19), on one core, beside a raw verify of the
    same cost in the same run; a wrong password and an unknown username must cost the same."""
    good, raw = login["login_ms"], login["raw_verify_ms"]
    wrong, unknown = login["wrong_password_ms"], login["unknown_username_ms"]
    cost = login["argon2"]
    core = (f"one core (CPU {login['cpu']})" if login["pinned_to_one_core"]
            else "NOT pinned to one core")
    spread, limit = login["p50_spread"], login["p50_spread_limit"]
    return [
        (f"login, argon2{cost['type']} t={cost['time_cost']} m={cost['memory_cost_kib']} KiB "
         f"p={cost['parallelism']}, {core}: logins/s (p50 / p99 ms)",
         f"{login['logins_per_s']} ({good['p50']} / {good['p99']})",
         f"no target; p50 {login['login_vs_raw_p50']}x the raw verify's"),
        ("  ... raw argon2 verify, PasswordHasher() defaults, same core: verifies/s "
         "(p50 / p99 ms)", f"{login['raw_verifies_per_s']} ({raw['p50']} / {raw['p99']})",
         "baseline"),
        ("  ... wrong password, unknown username: p50 / p99 (ms)",
         f"{wrong['p50']} / {wrong['p99']}, {unknown['p50']} / {unknown['p99']}",
         "no target"),
        ("  ... p50 good / wrong password / unknown username (ms)",
         " / ".join(map(str, login["p50_good_wrong_unknown_ms"])),
         ("alike" if spread <= limit else "APART: timing tells them apart")
         + f" (spread {spread:.1%}, at most {limit:.0%})"),
    ]


def pm_scope_rows(pm: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """A property manager's scope check on list routes (issue #19), at 20 clients: the same
    routes on the same community with the installer's token and the property manager's, side
    by side in time, beside a key lookup through the gateway in the same run."""
    rows: list[tuple[str, Any, str]] = []
    for route, label in (("residents", "a community's residents, one page of "
                                       f"{pm['apartments_per_community']}"),
                         ("communities", "the community list")):
        mine, theirs = pm[f"{route}_property_manager"], pm[f"{route}_installer"]
        diff = pm["pm_minus_installer"][route]
        rows.append((f"{label}, 20 clients, installer / property manager token: req/s "
                     "(p50 / p99 ms)",
                     f"{theirs['per_s']} ({theirs['ms']['p50']} / {theirs['ms']['p99']}) / "
                     f"{mine['per_s']} ({mine['ms']['p50']} / {mine['ms']['p99']})",
                     f"no target; PM - installer p50 {diff['p50_ms']:+} ms "
                     f"({diff['p50_share']:+.1%}), services' CPU "
                     f"{diff['services_cpu_ms_per_request']:+} ms a request"))
    base, alone = pm["apartment_get_installer"], pm["check_alone_us"]
    rows.append(("  ... GET one APT, installer token, 20 clients: req/s (p50 / p99 ms)",
                 f"{base['per_s']} ({base['ms']['p50']} / {base['ms']['p99']})",
                 "baseline: the hops alone"))
    rows.append(("  ... the check alone in process, installer / property manager ctx (us)",
                 f"{alone['installer']} / {alone['property_manager']}", "baseline"))
    return rows


def main() -> None:
    ensure_database(DATABASE)
    raw = run("raw_pika.py", AMQP.replace("5672/", "5672/%2F") if AMQP.endswith("5672/")
              else AMQP)
    relay = run("relay_rate.py", "50000")
    latency = run("event_latency.py", "300")
    gateway = run("gateway_latency.py", "300")
    rebuild = run("rebuild_rate.py", "30000")
    scaled = run("scale.py", "--hop", "1000", "10000", "50000")
    scale, hop = scaled["scale"], scaled["gateway_apartment_get"]
    spread = run("scale.py", "--communities", "50", "50000")["scale"]
    devices = run("devices.py", "10000", "50")
    traffic = run("traffic.py", "100000", "1000")
    fleet = run("fleet.py", "100000", "150")
    commands = run("commands.py", "1000", "1000", "20")
    login = run("login.py", "60")
    pm_scope = run("pm_scope.py")
    half_raw = raw["pika_publish_per_s"] / 2
    lat = latency["event_latency_ms"]
    one = gateway["add_apartment_1_client"]
    twenty = gateway["add_apartment_20_clients"]
    replicas = gateway["add_apartment_20_clients_2_topology_replicas"]
    answers = replicas["statuses"]
    failures = sum(n for code, n in answers.items() if code != "201")
    share = replicas["per_s"] / twenty["per_s"]
    rows = [
        ("raw pika publish, no confirms (msg/s)", raw["pika_publish_per_s"], "baseline"),
        ("raw pika consume, prefetch 1000 (msg/s)", raw["pika_consume_per_s"], "baseline"),
        ("relay publish with confirms, 50k-event store (events/s)",
         relay["relay_confirmed_per_s"],
         f"{verdict(relay['relay_confirmed_per_s'] >= half_raw)} (>= {half_raw:.0f}, half raw)"),
        ("event latency commit -> subscriber effect p50 / p99 (ms)",
         f"{lat['p50']} / {lat['p99']}", verdict(lat["p50"] <= 10 and lat["p99"] <= 25)),
        ("add apartment, 1 client: p50 / p99 (ms)",
         f"{one['latency_ms']['p50']} / {one['latency_ms']['p99']}",
         verdict(one["latency_ms"]["p50"] <= 15)),
        ("add apartment, 20 clients: req/s (p50 / p99 ms)",
         f"{twenty['per_s']} ({twenty['latency_ms']['p50']} / {twenty['latency_ms']['p99']})",
         verdict(twenty["per_s"] >= 250)),
        ("  ... whole chain to the last activation email (req/s)", twenty["chain_per_s"],
         "no target; the emails finish after the answers"),
        ("add apartment, 20 clients, two topology replicas: req/s (share of one replica's)",
         f"{replicas['per_s']} ({share:.0%}), answers {answers}",
         f"{verdict(failures == 0)} (every answer 201: no 5xx, no false 409)"
         + ("" if share >= 0.85 else "; a drop of more than 15% is a finding to explain")),
        ("  ... CPU per request, all processes / RabbitMQ alone (ms)",
         f"{twenty['cpu_ms_per_request']['total']} / {twenty['cpu_ms_per_request']['rabbitmq']}",
         "no target; RabbitMQ runs none of our code, so its figure tracks the machine"),
        ("residents read model rebuild (events/s)", rebuild["rebuild_events_per_s"],
         verdict(rebuild["rebuild_events_per_s"] >= 30000)),
    ]
    rows.extend(scale_rows(scale, hop))
    rows.append(("  ... a route's hop: GET one APT through the gateway, p50/p99 ms",
                 f"{hop['p50']}/{hop['p99']}",
                 "add it to each read above for the route (the baseline is the read part)"))
    rows.extend(spread_rows(spread, hop))
    rows.extend(device_rows(devices))
    rows.extend(traffic_rows(traffic))
    rows.extend(fleet_rows(fleet))
    rows.extend(command_rows(commands))
    rows.extend(login_rows(login))
    rows.extend(pm_scope_rows(pm_scope))
    width = max(len(r[0]) for r in rows)
    print(f"{'figure'.ljust(width)}  value  verdict")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value}  {note}")
    print(json.dumps({"raw": raw, "relay": relay, "latency": latency, "gateway": gateway,
                      "rebuild": rebuild, "scale": scaled, "scale_50_communities": spread,
                      "devices": devices, "traffic": traffic, "fleet": fleet,
                      "commands": commands, "login": login, "pm_scope": pm_scope}))


if __name__ == "__main__":
    main()
