"""The confirm bookkeeping of the relay's publisher: which tags the broker has settled.

The broker acks with `multiple` most of the time, but single acks and nacks may arrive in any
order; a wait must end exactly when every tag up to its ticket is settled.
"""

from __future__ import annotations

from concierge.bus import ConfirmingPublisher


def publisher() -> ConfirmingPublisher:
    return ConfirmingPublisher("amqp://guest:guest@127.0.0.1:5672/", "ledger")


def test_a_multiple_ack_settles_every_tag_up_to_it() -> None:
    p = publisher()
    p._on_ack(3, True)
    assert p._settled == 3
    p._on_ack(2, True)  # an older ack changes nothing
    assert p._settled == 3
    p._on_ack(1000, True)
    assert p._settled == 1000


def test_single_acks_out_of_order_settle_once_the_gap_closes() -> None:
    p = publisher()
    for tag in (2, 4, 3):
        p._on_ack(tag, False)
    assert p._settled == 0  # tag 1 is still pending
    p._on_ack(1, False)
    assert p._settled == 4
    assert not p._settled_above


def test_a_multiple_ack_over_single_acks_keeps_the_ones_above_it() -> None:
    p = publisher()
    p._on_ack(5, False)
    p._on_ack(8, False)
    p._on_ack(4, True)
    assert p._settled == 5  # 1-4 by the multiple ack, then the single ack of 5
    p._on_ack(7, True)
    assert p._settled == 8
    assert not p._settled_above


def test_a_nack_settles_its_tags_and_is_remembered() -> None:
    p = publisher()
    p._on_ack(2, True)
    p._on_nack(3, False)
    assert p._settled == 3
    assert p._nacked
    p._on_nack(6, True)
    assert p._settled == 6
