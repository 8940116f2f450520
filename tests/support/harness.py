"""Running services for tests: in-process nameko runners and separate OS processes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import kombu

from concierge.bus import exchange_name, subscription_queue_name
from concierge.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on now, for a gateway under test."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reset_bus(amqp_uri: str, services: Iterable[str], prefix: str = "") -> None:
    """Delete the queues these services use, so no test sees another test's messages.

    `prefix`: a named deployment's (`Settings.amqp_prefix`); its exchanges are deleted too,
    since nothing outside the deployment uses them.
    """
    names = list(services)
    if amqp_uri.startswith("concierge-memory"):
        return
    with kombu.Connection(amqp_uri) as conn:
        channel = conn.channel()
        for sub, src in itertools.permutations(names, 2):
            channel.queue_delete(subscription_queue_name(sub, src, prefix))
        for name in names:
            channel.queue_delete(f"{prefix}rpc-{name}")
        if "devices" in names:  # the traffic ingest's queues
            channel.queue_delete(f"{prefix}devices.traffic")
            channel.queue_delete(f"{prefix}devices.traffic.dead")
        if prefix:
            for name in names:
                channel.exchange_delete(exchange_name(name, prefix))
            channel.exchange_delete(f"{prefix}nameko-rpc")
            if "devices" in names:
                channel.exchange_delete(f"{prefix}devices.traffic")
                channel.exchange_delete(f"{prefix}devices.traffic.dead")
        channel.close()


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CONCIERGE_DATA_DIR": str(settings.data_dir),
        "AMQP_URI": settings.amqp_uri,
        "CONCIERGE_DATABASE_URL": settings.database_url,
        "CONCIERGE_DEPLOYMENT": settings.deployment,
        "CONCIERGE_SCHEMA_PREFIX": settings.schema_prefix,
        "CONCIERGE_DB_POOL_SIZE": str(settings.db_pool_size),
        "CONCIERGE_RELAY_IDLE_SECONDS": str(settings.relay_idle_seconds),
        "CONCIERGE_SHUTDOWN_SECONDS": str(settings.shutdown_seconds),
        "CONCIERGE_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "CONCIERGE_OFFLINE_TOLERANCE": str(settings.offline_tolerance),
        "PYTHONPATH": str(ROOT),
    })
    return env


class ServiceProcess:
    """One or more services in their own OS process, so a test can kill -9 it."""

    def __init__(self, services: list[str], settings: Settings) -> None:
        self.args = [sys.executable, "-m", "concierge.serve", *services]
        self.env = settings_env(settings)
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.proc.returncode}")
            if line.strip() == "ready":
                return
        raise RuntimeError(f"{self.args} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll `check` until it returns a truthy value; the last failure is raised on time-out.

    Used to wait for asynchronous delivery, never to assert on speed.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        from concierge import green

        green.sleep(interval)
    if last:
        raise last
    raise AssertionError(f"condition not met within {timeout}s")


class FakeLog:
    """A source's log as a subscription's `read_log` sees it, from a list; counts the reads."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.reads = 0

    def __call__(self, source: str, after: int, limit: int) -> list[dict[str, Any]]:
        self.reads += 1
        return [e for e in self.events if e["position"] > after][:limit]
