"""Notify's pusher without a broker or database: what it sends to the devices' mailboxes, what
it records, and what a push whose deadline passed or a broker failure leaves behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from services.notify.application import NotifyApplication
from services.notify.domain import DevicePush
from services.notify.pusher import Pusher

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class View:
    """The pending pushes view, read from the store (what the real one projects)."""

    def __init__(self, app: NotifyApplication) -> None:
        self.app = app

    def pending_pushes(self, limit: int) -> list[dict[str, Any]]:
        found = []
        for record in self.app.read(0, 10_000):
            if record.type != "PushQueued":
                continue
            push = self.app.repository.get(UUID(record.stream_id))
            if push.pending:
                found.append({"id": push.id, "command_id": push.command_id, "mac": push.mac,
                              "kind": push.kind, "params": push.params,
                              "deadline": push.deadline})
        return found[:limit]


class Mailboxes:
    def __init__(self, fail_on: str | None = None) -> None:
        self.delivered: list[tuple[str, dict[str, Any], str, float]] = []
        self.fail_on = fail_on

    def deliver(self, recipient: str, body: bytes, message_id: str, ttl_seconds: float) -> None:
        if recipient == self.fail_on:
            raise ConnectionError("broker gone")
        self.delivered.append((recipient, json.loads(body), message_id, ttl_seconds))

    def close(self) -> None:
        pass


class Lock:
    def acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


@pytest.fixture
def app() -> Iterator[NotifyApplication]:
    application = NotifyApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    application.views = View(application)  # type: ignore[assignment]
    yield application
    application.close()


def queued(app: NotifyApplication, mac: str, deadline: datetime, kind: str = "reboot",
           params: dict[str, Any] | None = None) -> str:
    command_id = str(uuid4())
    envelope = {"type": "CommandQueued", "stream_id": command_id,
                "data": {"device_id": "d-1", "mac": mac, "kind": kind,
                         "params": params or {}, "deadline": deadline.isoformat()}}
    app.record(*app.on_devices_event(envelope))
    return command_id


def pusher(app: NotifyApplication, mailboxes: Mailboxes) -> Pusher:
    return Pusher(app, mailboxes, Lock(), clock=lambda: NOW)  # type: ignore[arg-type]


def state(app: NotifyApplication, command_id: str) -> str:
    return str(app.repository.get(DevicePush.create_id(command_id)).state)


def test_a_queued_command_is_pushed_to_its_device_with_the_time_left_and_recorded_sent(
        app: NotifyApplication) -> None:
    command = queued(app, "0C11050B9814", NOW + timedelta(minutes=10), "autop",
                     {"commands": ["A.B = 1"], "once": True})
    boxes = Mailboxes()

    assert pusher(app, boxes).push_due() == 1

    [(mac, body, message_id, ttl)] = boxes.delivered
    assert (mac, message_id, ttl) == ("0C11050B9814", command, 600.0)
    assert body == {"v": 1, "command_id": command, "kind": "autop",
                    "params": {"commands": ["A.B = 1"], "once": True},
                    "deadline": (NOW + timedelta(minutes=10)).isoformat()}
    assert state(app, command) == "sent"
    assert pusher(app, boxes).push_due() == 0  # nothing waits any more
    assert len(boxes.delivered) == 1


def test_a_command_queued_twice_makes_one_push(app: NotifyApplication) -> None:
    command = queued(app, "0C11050B9814", NOW + timedelta(minutes=10))
    again = {"type": "CommandQueued", "stream_id": command,
             "data": {"device_id": "d-1", "mac": "0C11050B9814", "kind": "reboot",
                      "params": {}, "deadline": (NOW + timedelta(minutes=10)).isoformat()}}
    assert app.on_devices_event(again) == []


def test_a_push_past_its_deadline_is_recorded_expired_and_never_sent(
        app: NotifyApplication) -> None:
    late = queued(app, "0C11050B9814", NOW - timedelta(seconds=1))
    due = queued(app, "0C11050B9815", NOW + timedelta(seconds=30))
    boxes = Mailboxes()

    pusher(app, boxes).push_due()

    assert [d[0] for d in boxes.delivered] == ["0C11050B9815"]
    assert (state(app, late), state(app, due)) == ("expired", "sent")
    expired = [r for r in app.stream(DevicePush.create_id(late)) if r.type == "PushExpired"]
    assert len(expired) == 1


def test_a_broker_failure_records_what_was_confirmed_and_leaves_the_rest_waiting(
        app: NotifyApplication) -> None:
    first = queued(app, "0C11050B9814", NOW + timedelta(minutes=1))
    second = queued(app, "0C11050B9815", NOW + timedelta(minutes=1))
    broken = Mailboxes(fail_on="0C11050B9815")

    with pytest.raises(ConnectionError):
        pusher(app, broken).push_due()

    assert (state(app, first), state(app, second)) == ("sent", "pending")
    healthy = Mailboxes()
    pusher(app, healthy).push_due()
    assert [d[2] for d in healthy.delivered] == [second]
    assert state(app, second) == "sent"
