"""The publisher's ack ledger against a fake producer: commits never run ahead of an unacknowledged
output, failed sends are re-sent in order on a new producer, permanent errors are fatal, and the
Tansu outage rules hold everything until the output topics exist again. No broker, no sleeps: the
producer's futures are resolved by hand and the publisher's clock is a counter."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import errors as kerr
from kafka.future import Future
from prometheus_client import CollectorRegistry

import netsiam.detector.delivery as delivery
from netsiam.detector.delivery import ACK_OVERDUE_S, PRODUCER_STALL_S, FatalError, Publisher
from netsiam.detector.metrics import DetectorMetrics
from netsiam.detector.tansu import TansuWorkarounds


class FakeProducer:
    """Records every send with its future; nothing is acknowledged until a test says so."""

    def __init__(self, kw: dict[str, Any]) -> None:
        self.kw = kw
        self.sends: list[tuple[str, bytes | None, bytes, Future]] = []
        self.closed = False
        self.config = {"api_version": (2, 6)}

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Future:
        fut = Future()
        self.sends.append((topic, key, value, fut))
        return fut

    def values(self) -> list[bytes]:
        return [v for _, _, v, _ in self.sends]

    def ack(self, i: int) -> None:
        self.sends[i][3].success(None)

    def fail(self, i: int, exc: Exception) -> None:
        self.sends[i][3].failure(exc)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Rig:
    """A publisher wired to fake producers (``made``), a fake clock and a fresh registry."""

    def __init__(self, rules: Any = None) -> None:
        self.made: list[FakeProducer] = []
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.pub = Publisher({"client_id": "t"}, DetectorMetrics(self.registry), rules, factory=self.factory,
                             clock=self.clock)

    def factory(self, kw: dict[str, Any]) -> FakeProducer:
        p = FakeProducer(kw)
        self.made.append(p)
        return p

    @property
    def producer(self) -> FakeProducer:
        return self.made[-1]

    def send(self, *values: bytes, fault: str | None = None) -> None:
        for v in values:
            self.pub.send("out", b"k", v, fault=fault, state="raised" if fault else "")

    def events(self, fault: str) -> float:
        return self.registry.get_sample_value("netsiam_fault_events_total", {"fault": fault, "state": "raised"}) or 0.0


def test_commits_wait_for_every_earlier_output_whatever_order_acks_arrive_in() -> None:
    r = Rig()
    r.send(b"0", b"1", b"2", b"3", b"4")
    assert r.pub.ledger.sent == 5 and r.pub.ledger.pending_safe() == 5
    for i in (1, 2, 4):
        r.producer.ack(i)
    assert r.pub.ledger.acked_below(0)
    assert not r.pub.ledger.acked_below(1) and not r.pub.ledger.acked_below(3)  # output 0 still out: nothing commits
    r.producer.ack(0)
    assert r.pub.ledger.acked_below(3) and not r.pub.ledger.acked_below(4) and not r.pub.ledger.acked_below(5)
    r.producer.ack(3)
    assert r.pub.ledger.acked_below(5) and r.pub.ledger.pending_safe() == 0 and r.pub.ledger.oldest_unacked_s() == 0.0


def test_a_failed_send_is_resent_in_order_on_a_new_producer_and_counted_once() -> None:
    r = Rig()
    r.send(b"a", b"b", b"c", b"d", fault="blocked")
    first = r.producer
    first.ack(0)
    first.fail(1, kerr.KafkaTimeoutError("delivery timeout"))
    r.pub.recover(broker_up=True)
    assert len(r.made) == 2 and first.closed
    assert r.producer.values() == [b"b", b"c", b"d"]            # unacknowledged ones, in send order
    assert r.producer.kw["api_version"] == (2, 6)                # no bootstrap probe while the broker is away
    first.ack(2)                                                  # the old send got through after all
    for i in range(3):
        r.producer.ack(i)
    assert r.pub.ledger.acked_below(4)
    assert r.events("blocked") == 4                               # "c" acked twice, counted once


def test_an_error_resending_cannot_cure_is_fatal() -> None:
    r = Rig()
    r.send(b"x")
    r.producer.fail(0, kerr.MessageSizeTooLargeError("too big"))
    with pytest.raises(FatalError, match="refused by the broker: MessageSizeTooLargeError"):
        r.pub.recover(broker_up=True)
    assert len(r.made) == 1


def test_no_new_producer_while_the_broker_is_away_and_backoff_between_recreations() -> None:
    r = Rig()
    r.send(b"x")
    r.producer.fail(0, kerr.KafkaTimeoutError())
    r.pub.recover(broker_up=False)
    assert len(r.made) == 1                                      # it could not deliver either
    r.pub.recover(broker_up=True)
    assert len(r.made) == 2
    r.producer.fail(0, kerr.KafkaTimeoutError())                 # no progress since: the backoff holds
    r.pub.recover(broker_up=True)
    assert len(r.made) == 2
    r.clock.t += delivery.RECOVER_BACKOFF_S[0]
    r.pub.recover(broker_up=True)
    assert len(r.made) == 3
    r.producer.fail(0, kerr.KafkaTimeoutError())
    r.clock.t += delivery.RECOVER_BACKOFF_S[0]                   # doubled: not yet
    r.pub.recover(broker_up=True)
    assert len(r.made) == 3
    r.clock.t += delivery.RECOVER_BACKOFF_S[0]
    r.pub.recover(broker_up=True)
    assert len(r.made) == 4 and r.producer.values() == [b"x"]


def test_a_producer_without_acks_while_the_broker_answers_is_replaced() -> None:
    r = Rig()
    r.send(b"x", b"y")
    r.pub.check_stall(r.pub.ledger.oldest_unacked_s())
    r.pub.recover(broker_up=True)
    assert len(r.made) == 1                                      # not stalled yet
    r.clock.t += PRODUCER_STALL_S + 1
    r.pub.check_stall(r.pub.ledger.oldest_unacked_s())
    r.pub.recover(broker_up=True)
    assert len(r.made) == 2 and r.producer.values() == [b"x", b"y"]


def test_congestion_by_count_bytes_and_age(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "MAX_UNACKED", 2)
    monkeypatch.setattr(delivery, "MAX_UNACKED_BYTES", 10)
    r = Rig()
    r.send(b"123456")
    assert not r.pub.ledger.congested()
    r.send(b"123456")                                            # 12 bytes unacknowledged
    assert r.pub.ledger.congested()
    r.producer.ack(0)
    assert not r.pub.ledger.acked_below(2)                              # (a commit check drops acked outputs)
    assert not r.pub.ledger.congested()                                 # 6 bytes left
    r.send(b"1", b"2")                                           # 3 outputs
    assert r.pub.ledger.congested()
    for i in (1, 2, 3):
        r.producer.ack(i)
    assert r.pub.ledger.acked_below(4)
    r.send(b"z")
    assert not r.pub.ledger.congested()
    r.clock.t += ACK_OVERDUE_S + 0.1
    assert r.pub.ledger.congested() and r.pub.ledger.overdue_s_safe() > ACK_OVERDUE_S


def test_shutdown_gives_up_on_outputs_never_acknowledged() -> None:
    r = Rig()
    r.send(b"x")
    with pytest.raises(FatalError, match="1 message"):
        r.pub.wait_all_acked(0.0, broker_up=True)
    r.producer.ack(0)
    r.pub.wait_all_acked(0.0, broker_up=True)


def test_tansu_outage_holds_every_output_until_the_output_topics_exist_again() -> None:
    topics = {"samples", "out", "dl"}
    rules = TansuWorkarounds(lambda: set(topics), ("out", "dl", "never-created"))
    assert rules.outputs == {"out", "dl"}                        # awaited: only those there at start
    r = Rig(rules)
    r.send(b"a", b"b")
    old = r.producer
    r.pub.broker_lost("broker unreachable")
    assert old.closed                                            # retired at once, not left retrying
    r.send(b"c")
    assert old.values() == [b"a", b"b"]                          # a retired producer gets nothing new
    topics.clear()                                               # back, restarted empty
    r.pub.recover(broker_up=True)
    assert len(r.made) == 1 and r.pub.ledger.pending_safe() == 3        # held: a produce would be dropped
    topics.update({"samples", "out"})
    r.clock.t += 1.0
    r.pub.recover(broker_up=True)
    assert len(r.made) == 1                                      # "dl" still missing
    topics.add("dl")
    r.clock.t += 1.0
    r.pub.recover(broker_up=True)
    assert len(r.made) == 2 and r.producer.values() == [b"a", b"b", b"c"]


def test_a_producer_retired_with_nothing_held_is_replaced_as_soon_as_the_broker_is_back() -> None:
    """An outage while nothing was in flight: the first events after it went into the retired producer
    and waited PRODUCER_STALL_S for the stall rule (consumption paused ~10 s after every broker restart)."""
    topics = {"samples", "out"}
    r = Rig(TansuWorkarounds(lambda: set(topics), ("out",)))
    r.send(b"a")
    r.producer.ack(0)
    r.pub.broker_lost("broker unreachable")
    r.pub.recover(broker_up=False)
    assert len(r.made) == 1                                      # away: no new producer yet
    r.pub.recover(broker_up=True)
    assert len(r.made) == 2 and not r.producer.closed            # back: replaced at once
    r.send(b"b")
    assert r.producer.values() == [b"b"]                         # sent on the new producer, not failed
    r.producer.ack(0)
    assert r.pub.ledger.pending_safe() == 0


def test_a_durable_broker_keeps_the_producer_through_an_outage() -> None:
    r = Rig()
    r.send(b"a")
    r.pub.broker_lost("broker unreachable")
    assert not r.producer.closed and r.pub.ledger.pending_safe() == 1
    r.pub.recover(broker_up=True)
    assert len(r.made) == 1                                      # its own retries deliver
