"""Passwords are hashed in OS threads, a few at a time, and cost the same for any username.

argon2 on the event loop held every other request of the process (the gateway's too, embedded)
while 50 wrong logins were checked (issue 14, finding 9); tests/e2e/test_hostile_clients.py
shows the effect through the gateway, these show the parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher, extract_parameters
from eventlet import patcher

from concierge import green
from concierge.config import Settings
from contracts.errors import Busy, Unauthorized
from services.accounts.application import AccountsApplication
from services.accounts.declaration import CONTEXT as ACCOUNTS
from services.accounts.security import Credentials

real_sleep = patcher.original("time").sleep
RealLock = patcher.original("threading").Lock


def test_a_password_check_leaves_the_event_loop_free() -> None:
    credentials = Credentials()  # argon2 at its real cost
    stored = credentials.hash_password("the-password")
    ticks = [0]
    stop = [False]

    def tick() -> None:
        while not stop[0]:
            ticks[0] += 1
            green.sleep(0.001)

    ticker = green.spawn(tick)
    green.sleep(0.01)
    before = ticks[0]
    assert not credentials.verify_password(stored, "not-the-password")
    during = ticks[0] - before
    stop[0] = True
    ticker.wait()
    # On the event loop nothing else can run until argon2 returns: not one tick.
    assert during > 0


def test_a_throttle_runs_so_many_queues_so_many_more_and_refuses_the_rest_at_once() -> None:
    throttle = green.Throttle(running=1, waiting=2)
    inside = [0, 0]  # now, most ever
    lock = RealLock()

    def hash_like() -> str:
        with lock:
            inside[0] += 1
            inside[1] = max(inside)
        real_sleep(0.2)  # a CPU-bound call in its OS thread
        with lock:
            inside[0] -= 1
        return "checked"

    outcomes: list[str] = []

    def call() -> None:
        try:
            outcomes.append(throttle.run(hash_like))
        except green.Saturated:
            outcomes.append("refused")

    callers = [green.spawn(call) for _ in range(5)]
    for caller in callers:
        caller.wait()
    assert sorted(outcomes) == ["checked"] * 3 + ["refused"] * 2
    assert outcomes[:2] == ["refused", "refused"]  # refused before any check ended
    assert inside == [0, 1]
    assert throttle.busy == 0


def test_a_check_refused_for_want_of_room_is_busy() -> None:
    credentials = Credentials(throttle=green.Throttle(running=0, waiting=0))
    with pytest.raises(Busy):
        credentials.verify_password("$argon2id$whatever", "password")


class CountingHasher(PasswordHasher):
    """argon2 at its lowest cost, counting what it is asked to do."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1, hash_len=16)
        self.hashed = 0
        self.verified: list[str] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashed += 1
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        self.verified.append(str(hash))
        return super().verify(hash, password)


def test_an_unknown_username_costs_one_check_like_a_known_one(tmp_path: Path) -> None:
    hasher = CountingHasher()
    config = Settings(data_dir=tmp_path, bootstrap_distributor="root:root-password")
    wiring = ACCOUNTS.wire(config, credentials=Credentials(hasher))
    app = wiring.app
    assert isinstance(app, AccountsApplication)
    try:
        hasher.hashed, hasher.verified = 0, []
        with pytest.raises(Unauthorized):
            app.login("root", "not-the-password")
        [known] = hasher.verified
        with pytest.raises(Unauthorized):
            app.login("nobody", "not-the-password")
        [_, decoy] = hasher.verified
        # One check each, against hashes of the same cost; the very first unknown username
        # does not pay for making the decoy.
        assert hasher.hashed == 0
        assert decoy != known
        assert extract_parameters(decoy) == extract_parameters(known)
    finally:
        wiring.close()
