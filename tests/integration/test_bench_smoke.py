"""The scale benchmark runs end to end at a tiny size on the embedded store: `make bench` runs it
where no other test does, and a tiny size once failed where the real ones passed (a size
smaller than what the previous size's commands had added)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from tests.support.harness import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_scale_benchmark_prints_every_read_at_each_size() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_DATABASE_URL": ""}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "60", "120"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["store"] == "sqlite" and list(figures["scale"]) == ["60", "120"]
    for stage in figures["scale"].values():
        timed = {name: value for name, value in stage.items() if isinstance(value, dict)}
        assert {"residents_last_page", "search_substring_many", "dashboard",
                "residents_registered_last_page", "add_apartment_1_client"} <= set(timed)
        assert all(value["n"] == 40 and value["p50"] > 0 for value in timed.values())
        assert stage["add_apartment_8_clients_per_s"] > 0


@pytest.mark.broker
@pytest.mark.postgres
def test_the_traffic_benchmark_drains_its_messages_beside_raw_pika(
        rabbit_uri: str, postgres_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_AMQP_URI": rabbit_uri,
           "BENCH_DATABASE_URL": postgres_url, "BENCH_PORT": str(free_port())}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "traffic.py"), "2000", "20"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["messages"] == 2000 and figures["devices"] == 20
    assert figures["ingest_per_s"] > 0 and figures["raw_pika_consume_per_s"] > 0


@pytest.mark.broker
@pytest.mark.postgres
def test_the_command_benchmark_times_each_round_trip_beside_raw_pika(
        rabbit_uri: str, postgres_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_AMQP_URI": rabbit_uri,
           "BENCH_DATABASE_URL": postgres_url, "BENCH_PORT": str(free_port())}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "commands.py"), "30", "50", "20"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["commands"] == 30 and figures["devices"] == 50
    assert figures["succeeded"] == 30 and figures["pushes"] == 30
    assert figures["round_trip_ms"]["n"] == 30 and figures["round_trip_ms"]["p50"] > 0
    assert figures["raw_pika_round_trip_ms"]["n"] == 30


def test_the_login_benchmark_times_each_kind_of_login_on_one_core() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_DATABASE_URL": ""}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "login.py"), "2"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["store"] == "sqlite" and figures["pinned_to_one_core"]
    production = PasswordHasher()  # the library's defaults: what `Credentials()` hashes with
    assert figures["argon2"] == {"type": "id", "time_cost": production.time_cost,
                                 "memory_cost_kib": production.memory_cost,
                                 "parallelism": production.parallelism}
    for kind in ("raw_verify_ms", "login_ms", "wrong_password_ms", "unknown_username_ms"):
        assert figures[kind]["n"] == 2 and figures[kind]["p50"] > 0
    assert figures["logins_per_s"] > 0 and figures["raw_verifies_per_s"] > 0


@pytest.mark.broker
@pytest.mark.postgres
def test_the_property_manager_benchmark_times_both_tokens_on_each_list(
        rabbit_uri: str, postgres_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_AMQP_URI": rabbit_uri,
           "BENCH_DATABASE_URL": postgres_url, "BENCH_PORT": str(free_port())}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "pm_scope.py"), "0.2", "2", "3"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["rounds"] == 2 and figures["apartments_per_community"] == 3
    for route in ("residents", "communities"):
        for who in ("installer", "property_manager"):
            assert figures[f"{route}_{who}"]["ms"]["n"] > 0
            assert len(figures[f"{route}_{who}"]["p50_by_round"]) == 2
        assert len(figures["pm_minus_installer"][route]["p50_ms_by_round"]) == 2
    assert figures["residents_property_manager"]["items_per_answer"] == 3
    assert figures["communities_property_manager"]["items_per_answer"] == 1
    assert figures["apartment_get_installer"]["per_s"] > 0
    assert figures["check_alone_us"]["property_manager"] > 0
