"""Start the platform as separate processes (one per service) for benchmarks and e2e tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Platform:
    """`concierge run SERVICE` for each service, on the given bus and database, as a deployment
    of its own (`CONCIERGE_DEPLOYMENT`): its queues, exchanges, schemas and lock keys meet no
    other platform's on the same servers."""

    def __init__(self, amqp_uri: str, database_url: str, data_dir: Path, port: int,
                 services: tuple[str, ...] | None = None,
                 extra_env: dict[str, str] | None = None, embedded: bool = False,
                 log_dir: Path | None = None, deployment: str | None = None) -> None:
        """`embedded`: one `concierge up` process on the in-process bus, as `make run` does.
        `log_dir`: each process's output goes to `<log_dir>/<service>.log` (`up.log`).
        A service named twice in `services` runs as two replicas; by default every declared
        context runs once (`concierge.contexts`)."""
        self.port = port
        self.log_dir = log_dir
        from concierge.contexts import contexts, stored_contexts

        self.services = tuple(contexts()) if services is None else services
        self.stored = stored_contexts()
        self.embedded = embedded
        self.data_dir = data_dir
        self.deployment = deployment or f"p{uuid.uuid4().hex[:6]}"
        self.amqp_prefix = f"{self.deployment}."
        self.env = {
            **os.environ,
            "AMQP_URI": amqp_uri,
            "CONCIERGE_DATABASE_URL": database_url,
            "CONCIERGE_DEPLOYMENT": self.deployment,
            "CONCIERGE_SCHEMA_PREFIX": f"{self.deployment}_",
            "CONCIERGE_DATA_DIR": str(data_dir),
            "CONCIERGE_GATEWAY_PORT": str(port),
            "CONCIERGE_BOOTSTRAP_DISTRIBUTOR": "bench-distributor:bench-distributor-pw",
            "CONCIERGE_PASSWORD_HASH": "fast",
            # Every client of a test platform is 127.0.0.1: only the per-address limit is
            # raised; the per-username ones stay as in production.
            "CONCIERGE_LOGIN_LIMITS": "addr=1000000",
            "CONCIERGE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._probe: str | None = None  # an installer's token, to see topology answer
        self.base = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 90) -> Platform:
        if not self.embedded:
            # A fresh store must not meet messages an earlier run left in durable queues.
            from tests.support.harness import reset_bus

            reset_bus(self.env["AMQP_URI"], self.stored, self.amqp_prefix)
        if self.embedded:
            env = {k: v for k, v in self.env.items()
                   if k not in ("AMQP_URI", "CONCIERGE_DATABASE_URL")}
            self.procs.append(self._popen("up", [self._concierge(), "up"], env))
        for name in () if self.embedded else self.services:
            self.procs.append(self._run(name))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, session = self.call("POST", "/api/v1/auth/login",
                                            {"username": "bench-distributor",
                                             "password": "bench-distributor-pw"})
                if status == 200 and self._topology_answers(session["token"]):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("the platform did not come up")

    @staticmethod
    def _concierge() -> str:
        return str(Path(sys.executable).with_name("concierge"))

    def _run(self, name: str) -> subprocess.Popen[bytes]:
        return self._popen(name, [self._concierge(), "run", name], self.env)

    def _popen(self, name: str, args: list[str], env: dict[str, str]
               ) -> subprocess.Popen[bytes]:
        if self.log_dir is None:
            return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as output:
            return subprocess.Popen(args, env=env, cwd=ROOT, stdout=output,
                                    stderr=subprocess.STDOUT)

    def log(self, name: str) -> bytes:
        """What a process (a service's name, or `up`) has written so far; needs `log_dir`.
        Replicas of a service write to the same file."""
        assert self.log_dir is not None, "start the platform with a log_dir"
        path = self.log_dir / f"{name}.log"
        return path.read_bytes() if path.exists() else b""

    def stop_service(self, name: str) -> None:
        """Stop every process of one service (its replicas), as a pod eviction would."""
        for index, (service, proc) in enumerate(zip(self.services, self.procs, strict=True)):
            if service == name and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                self.procs[index] = proc

    def start_service(self, name: str) -> None:
        """Start again every stopped process of one service."""
        for index, (service, proc) in enumerate(zip(self.services, self.procs, strict=True)):
            if service == name and proc.poll() is not None:
                self.procs[index] = self._run(name)

    def run(self, name: str, timeout: float = 60) -> subprocess.Popen[bytes]:
        """One more `concierge run NAME` (a second replica, or a restart), once it is ready.

        Its output goes to a file of its own in the log folder (`<data dir>/../logs/` when
        none was given), so a test can show it when something fails; `stop()` ends it with
        the others.
        """
        logs = self.log_dir or self.data_dir.parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{name}-{len(self.procs)}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen([self._concierge(), "run", name], env=self.env, cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.services = (*self.services, name)
        deadline = time.monotonic() + timeout
        while not any(line.startswith(b"ready") for line in path.read_bytes().splitlines()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{path.read_text()[-3000:]}")
            time.sleep(0.1)
        return proc

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The latest running process of a service (`up`: the embedded platform's)."""
        names = ("up",) if self.embedded else self.services
        return next(proc for proc, n in reversed(list(zip(self.procs, names, strict=True)))
                    if n == name and proc.poll() is None)

    def _topology_answers(self, token: str) -> bool:
        """Login proves the gateway and accounts are up; topology runs in its own process and
        may still be declaring its RPC queue (the gateway would answer 503). An installer's
        dashboard is the cheapest call that reaches it (the gateway refuses a distributor
        every topology route before any call)."""
        if not self.embedded and "topology" not in self.services:
            return True
        if self._probe is None:
            try:
                self._probe = self.installer_session("platform-probe")
            except (KeyError, TypeError):  # accounts refused: try again on the next round
                return False
        status, _ = self.call("GET", "/api/v1/dashboard", token=self._probe)
        return status != 503

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each service process and by the broker and database
        (Linux /proc), to show where a benchmark's work goes."""
        figures: dict[str, float] = {}
        for name, proc in zip(("up",) if self.embedded else self.services, self.procs,
                              strict=False):
            figures[name] = figures.get(name, 0.0) + pid_cpu_seconds(proc.pid)
        figures.update(infrastructure_cpu_seconds())
        return figures

    @contextlib.contextmanager
    def profiled(self, phase: str) -> Iterator[None]:
        """With `BENCH_PROFILE=<folder>`, sample every service process with py-spy while the
        block runs and write `<folder>/<phase>-<service>.txt` (collapsed stacks, the input of
        flame graphs and of `bench/hotspots.py`); without it, nothing."""
        folder = os.environ.get("BENCH_PROFILE")
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not folder or not Path(spy).exists():
            yield
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        names = ("up",) if self.embedded else self.services
        samplers = []
        for index, (name, proc) in enumerate(zip(names, self.procs, strict=False)):
            out = Path(folder) / f"{phase}-{name}{'' if names.count(name) == 1 else index}.txt"
            samplers.append(subprocess.Popen(
                [spy, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "200",
                 "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=(Path(folder) / f"{out.stem}.err").open("wb")))
        time.sleep(0.5)  # py-spy attaches before the work starts
        try:
            yield
        finally:
            for sampler in samplers:
                sampler.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
            for sampler in samplers:
                try:
                    sampler.wait(60)
                except subprocess.TimeoutExpired:
                    sampler.kill()

    def emails_delivered(self) -> int:
        """Emails in the mail folder so far (the embedded and default transport)."""
        folder = self.data_dir / "mail"
        if not folder.exists():
            return 0
        return sum(1 for name in os.listdir(folder) if name.endswith(".eml"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        deadline = time.monotonic() + 15  # one grace period for all, as a pod's stop has
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not self.embedded:  # no durable queue left to fill up
            from tests.support.harness import reset_bus

            reset_bus(self.env["AMQP_URI"], self.stored, self.amqp_prefix)
            if {"devices", "notify"} <= set(self.stored):
                self._drop_push_queues()

    def _drop_push_queues(self) -> None:
        """The push queues notify declared for this deployment's devices (each would wait on
        the broker for days): one per MAC the devices list holds."""
        import psycopg

        from concierge.devicesim import delete_push_queues

        try:
            with psycopg.connect(self.env["CONCIERGE_DATABASE_URL"], autocommit=True) as conn:
                macs = [row[0] for row in conn.execute(
                    f'SELECT mac FROM "{self.deployment}_devices".devices_devices')]
        except psycopg.Error:  # devices never made its tables
            return
        if macs:
            delete_push_queues(self.env["AMQP_URI"], macs, self.amqp_prefix)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, json.loads(raw) if raw else None

    def community_with_building(self, token: str, name: str = "Towers") -> tuple[str, str]:
        """An installer's new community with one building: their ids."""
        status, community = self.call("POST", "/api/v1/communities",
                                      {"name": name, "feature_plan": "premium",
                                       "time_zone": "Europe/Paris"}, token)
        assert status == 201, community
        status, building = self.call("POST", f"/api/v1/communities/{community['id']}/buildings",
                                     {"name": "A"}, token)
        assert status == 201, building
        return community["id"], building["id"]

    def installer_with_macs(self, macs: list[str], chunk: int = 20_000) -> tuple[str, str]:
        """A new installer with `macs` in its MAC library (CSV imports of `chunk`, each well
        within the gateway's timeout): its id and session token."""
        name = f"inst{uuid.uuid4().hex[:8]}"
        distributor = self.distributor_token()
        status, installer = self.call("POST", "/api/v1/installers",
                                      {"username": name, "password": "installer-pw-1",
                                       "email": f"{name}@example.org"}, distributor)
        assert status == 201, installer
        for start in range(0, len(macs), chunk):
            part = macs[start:start + chunk]
            # `start` waits for accounts and topology; devices may still be starting (503).
            deadline = time.monotonic() + 60
            while True:
                status, report = self.call(
                    "POST", f"/api/v1/installers/{installer['id']}/mac-library/import",
                    {"csv": "\n".join(part)}, distributor, timeout=600)
                if status != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert status == 200 and report["added"] == len(part), str(report)[:300]
        status, session = self.call("POST", "/api/v1/auth/login",
                                    {"username": name, "password": "installer-pw-1"})
        assert status == 200, session
        return installer["id"], session["token"]

    def distributor_token(self) -> str:
        _, session = self.call("POST", "/api/v1/auth/login",
                               {"username": "bench-distributor",
                                "password": "bench-distributor-pw"})
        return session["token"]

    def installer_session(self, name: str = "bench-installer") -> str:
        session = {"token": self.distributor_token()}
        self.call("POST", "/api/v1/installers",
                  {"username": name, "password": "installer-pw-1", "email": f"{name}@x.org"},
                  token=session["token"])
        _, mine = self.call("POST", "/api/v1/auth/login",
                            {"username": name, "password": "installer-pw-1"})
        return mine["token"]


def pid_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) one process has used so far, from Linux /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def infrastructure_cpu_seconds() -> dict[str, float]:
    """CPU time used so far by the broker's and the database's processes."""
    figures = {}
    for label, command in (("rabbitmq", "beam.smp"), ("postgresql", "postgres")):
        total = 0.0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == command:
                        total += pid_cpu_seconds(int(entry.name))
                except OSError:
                    continue
        figures[label] = total
    return figures
