"""Device pushes: the commands devices queued, sent to each device's mailbox on the broker.

One pusher across the replicas sends what the pending pushes view lists (each row holds the
push, so a pass reads nothing else before it sends), then records each as
sent (or expired, when its deadline passed while notify was away) in one commit per pass. A
crash between the broker's confirm and that commit sends those pushes again after the restart:
the device sees a command id twice and acknowledges it again (contracts/traffic.py, "pushes");
a replay of devices' events sends nothing twice, since a push is made once per command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from concierge.green import Wakeup
from concierge.leader import LeaderLoop
from concierge.locks import LeaderLock
from concierge.mailboxes import Mailboxes
from contracts.traffic import push_body
from services.notify.application import NotifyApplication
from services.notify.mailer import utcnow

log = logging.getLogger(__name__)


class Pusher:
    """Woken by every commit in this process (a push queued by the devices policy is one); the
    idle timeout covers pushes queued by another replica."""

    def __init__(self, app: NotifyApplication, mailboxes: Mailboxes, lock: LeaderLock,
                 refresh: Callable[[], None] = lambda: None,
                 clock: Callable[[], datetime] = utcnow, idle_seconds: float = 1.0,
                 batch_size: int = 500) -> None:
        self.app = app
        self.mailboxes = mailboxes
        self.refresh = refresh
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.batch_size = batch_size
        self.wakeup = Wakeup()
        self.loop = LeaderLoop("pusher", lock, self.wakeup, idle_seconds,
                               failure_pause=idle_seconds)
        self.sent = 0
        self.expired = 0
        self._refreshed = float("-inf")
        app.on_recorded(lambda _position: self.wakeup.set())

    def push_due(self) -> int:
        """One pass over the pending pushes: how many it took."""
        if time.monotonic() - self._refreshed >= self.idle_seconds:
            # Every replica projects its own events in the commit that records them, so a
            # wake-up by a commit finds the view current; what could lag (a rebuild swapped in
            # meanwhile) is caught up at most once per idle timeout.
            self._refreshed = time.monotonic()
            self.refresh()
        waiting = self.app.pending_pushes(self.batch_size)
        if not waiting:
            return 0
        now = self.clock()
        sent, expired = [], []
        try:
            for push in waiting:
                left = (datetime.fromisoformat(push["deadline"]) - now).total_seconds()
                if left <= 0:
                    expired.append(push["id"])
                    continue
                self.mailboxes.deliver(push["mac"], push_body(push["command_id"], push["kind"],
                                                              push["params"], push["deadline"]),
                                       push["command_id"], left)
                sent.append(push["id"])
        finally:  # what the broker confirmed is recorded, even when a later push failed
            if sent or expired:
                self.app.record_pushes(sent, expired, now)
                self.sent += len(sent)
                self.expired += len(expired)
        return len(waiting)

    def stop(self) -> None:
        self.loop.stop()

    def run(self) -> None:
        def step() -> float:
            return 0 if self.push_due() >= self.batch_size else self.idle_seconds

        self.loop.run(step, on_lost=self.mailboxes.close, last=self.mailboxes.close)
