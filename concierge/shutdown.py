"""Stopping a service process on SIGTERM or SIGINT: within a bound, losing nothing committed.

nameko stops a container by stopping its entrypoints, waiting for its workers without a bound,
then stopping its dependencies. A replica behind a queue needs the work it has not started
given back at once and the work it has started bounded, so `DrainingContainer.stop` goes:

1. intake: the web server closes its listening socket (and each connection after its current
   answer), the RPC consumer cancels (a request delivered but not acked goes back to the queue
   for another replica: `concierge.rpc.AtMostOnceRpcConsumer`), and the chassis's consumer
   loops take no new delivery (`Runtime.stop_intake`);
2. drain: running workers (commands, HTTP requests) have until `SHUTDOWN_SECONDS` after the
   signal to finish and answer; those still running then are killed (a transaction not yet
   committed rolls back, and the caller, who got no answer, gets its 504);
3. the dependencies: `Runtime.stop` lets the consumer loops finish their batch (same bound),
   then the relay publishes what was committed, saves its position and releases its lead, and
   the mailer releases its lead, within `FINISH_SECONDS` more;
4. nameko's own shared extensions and any thread still running.

`on_signals` runs that stop in a green thread: a signal handler runs on eventlet's hub, which
must not wait. The process then exits with code 0. A second signal exits at once (code 128 +
the signal's number); a stop that overruns its bound by `WATCHDOG_SECONDS` exits with code 1,
every green thread's stack on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any

from nameko.containers import ServiceContainer
from nameko.web.server import WebServer

from concierge import green
from concierge.config import Settings

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS_KEY = "SHUTDOWN_SECONDS"
# After the drain: the consumer loops' last batch, the relay's last pass and the release of the
# leader locks. Each takes milliseconds; this bounds a broker or database that stopped answering.
FINISH_SECONDS = 2.0
WATCHDOG_SECONDS = 3.0


def shutdown_seconds(config: dict[str, Any]) -> float:
    return float(config.get(SHUTDOWN_SECONDS_KEY, Settings.shutdown_seconds))


class DrainingContainer(ServiceContainer):
    """nameko's container, stopping in the order above (configured as SERVICE_CONTAINER_CLS)."""

    _draining = False

    def stop(self) -> None:
        if self._died.ready():
            return
        if self._being_killed or self._draining:  # already under way: wait for its end
            with contextlib.suppress(Exception):
                self._died.wait()
            return
        self._draining = True
        seconds = shutdown_seconds(self.config)
        began = time.monotonic()
        until = began + seconds
        log.info("stopping %s: no new work, up to %g s for the work in flight",
                 self.service_name, seconds)
        self._stop_intake(until)
        self._drain(until)
        finish = max(time.monotonic(), until) + FINISH_SECONDS
        try:
            # Runtime.stop bounds itself; nameko's shared extensions wait for the broker.
            with green.deadline(finish - time.monotonic()):
                self.dependencies.all.stop()
                self.subextensions.all.stop()
        except green.DeadlineExceeded:
            log.warning("%s: extensions did not stop in time; ending their threads",
                        self.service_name)
        self._kill_managed_threads()
        self.started = False
        if not self._died.ready():
            self._died.send(None)
        log.info("stopped %s in %.1f s", self.service_name, time.monotonic() - began)

    def _stop_intake(self, until: float) -> None:
        for dependency in self.dependencies:
            stop_intake = getattr(dependency, "stop_intake", None)
            if stop_intake is not None:
                stop_intake()
        for server in self._web_servers():
            _stop_accepting(server)
        try:
            # The RPC consumer cancels on its thread's next turn (within a second).
            with green.deadline(max(0.0, until - time.monotonic())):
                self.entrypoints.all.stop()
        except green.DeadlineExceeded:
            log.warning("%s: entrypoints did not stop in time", self.service_name)

    def _drain(self, until: float) -> None:
        try:
            with green.deadline(max(0.0, until - time.monotonic())):
                while True:
                    self._worker_pool.waitall()
                    # An HTTP worker hands its answer to its connection's thread, which writes
                    # it on its next turn (scheduled before this one's); a request that thread
                    # had read in full before the intake stopped gets its worker then too.
                    green.sleep(0)
                    if not self._worker_threads:
                        return
        except green.DeadlineExceeded:
            log.warning("%s: %d workers still running after %g s are abandoned",
                        self.service_name, len(self._worker_threads),
                        shutdown_seconds(self.config))
            self._kill_worker_threads()

    def _web_servers(self) -> list[WebServer]:
        return [ext for ext in self.subextensions if isinstance(ext, WebServer)]


def _stop_accepting(server: WebServer) -> None:
    """What nameko's WebServer.stop does first (it then waits for its entrypoints): close the
    listening socket; connections also close after their current answer."""
    server._is_accepting = False
    if server._serv is not None:
        server._serv.keepalive = False
    if server._gt is not None:
        server._gt.kill()
    if server._sock is not None:
        server._sock.close()


class SignalStop:
    """SIGTERM and SIGINT stop the runner gracefully; a second one ends the process at once."""

    def __init__(self, runner: Any, seconds: float) -> None:
        self.runner = runner
        self.seconds = seconds
        self.signalled = False

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)

    def on_signal(self, signum: int, _frame: Any) -> None:
        # Runs in whatever green thread the signal interrupted, mostly eventlet's hub, which
        # must not wait: no logging (its lock may be held by the interrupted thread), no green
        # I/O; the stop runs in a green thread of its own.
        if self.signalled:
            _say(f"{signal.Signals(signum).name} again: stopping at once, abandoning the work "
                 "in flight\n")
            os._exit(128 + signum)
        self.signalled = True
        signal.signal(signal.SIGALRM, self._overrun)
        signal.setitimer(signal.ITIMER_REAL, self.seconds + FINISH_SECONDS + WATCHDOG_SECONDS)
        green.spawn(self._stop, signum)

    def _stop(self, signum: int) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        self.runner.stop()

    def _overrun(self, _signum: int, _frame: Any) -> None:
        # A signal handler too, and the last resort: it also fires while the hub is blocked.
        _say(f"still not stopped {self.seconds + FINISH_SECONDS + WATCHDOG_SECONDS:g} s after "
             f"the signal; exiting. Green threads:\n{green.stacks()}\n")
        os._exit(1)


def _say(text: str) -> None:
    """To stderr without the logging or io locks, which a signal handler must not wait for."""
    with contextlib.suppress(OSError):
        green.write_now(2, text.encode(errors="replace"))


def on_signals(runner: Any, settings: Settings) -> SignalStop:
    """From now on SIGTERM and SIGINT (Ctrl+C) stop `runner` gracefully (runner.wait returns)."""
    stop = SignalStop(runner, settings.shutdown_seconds)
    stop.install()
    return stop
