"""``netsiam replay``: publish a JSON Lines trace to Kafka, at recorded pace x speed or flat out.

Each line goes out byte for byte (bad lines too, so the daemon's dead-letter path can be exercised),
keyed by its ``source`` so a source stays on one partition and in order. A line is parsed only to
find that key and its ``ts`` for pacing; a line that does not parse is sent with key None. A file
whose first line is no record at all (a SIPp CSV, a labels file) is refused before anything is sent.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from netsiam.config import Config, KafkaConfig
from netsiam.errors import NetsiamError, ServiceError, UsageError
from netsiam.producer import PublishError, producer_factory
from netsiam.schemas.timeparse import parse_ts
from netsiam.traceio import STDIO, read_trace

__all__ = ["ReplayStats", "cli_replay", "key_and_ts", "replay_lines"]


@dataclass(frozen=True)
class ReplayStats:
    sent: int
    failed: int
    seconds: float
    error: str = ""  # the first delivery error, if any
    unkeyed: int = 0  # lines sent without a source (not records: the daemon dead-letters them)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else math.inf


def key_and_ts(line: bytes) -> tuple[bytes | None, float | None]:
    """(source as the message key, ts) of a trace line; (None, None) where it does not parse."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    src = obj.get("source")
    key = src.encode() if isinstance(src, str) and src else None
    try:
        ts: float | None = parse_ts(obj.get("ts"))
    except ValueError:
        ts = None
    return key, ts


def replay_lines(lines: Iterable[bytes], bootstrap: str, topic: str, *, speed: float | None = None,
                 kafka: KafkaConfig | None = None, progress: bool = False, total: int | None = None) -> ReplayStats:
    """Send ``lines`` to ``topic``; ``speed`` None = as fast as possible. Waits for every ack.

    The producer is ``kafka.client``'s (kafka-python, or confluent-kafka: netsiam/producer.py)."""
    from tqdm import tqdm

    if speed is not None and not speed > 0:
        raise UsageError(f"--speed must be > 0, got {speed}")
    open_producer = producer_factory(kafka or KafkaConfig(), bootstrap, linger_ms=20 if speed is None else 2,
                                     errors_only=True)
    try:
        producer = open_producer()
    except PublishError as e:
        raise ServiceError(f"cannot reach the broker at {bootstrap}: {e}") from None
    failed = 0
    first_error: list[str] = []

    def on_delivery(exc: BaseException | None) -> None:
        nonlocal failed
        if exc is None:
            return
        failed += 1
        if not first_error:
            first_error.append(f"{type(exc).__name__}: {exc}")

    bar = tqdm(total=total, unit="rec", file=sys.stderr, disable=not progress, mininterval=0.5,
               desc=f"replay {topic}")
    sent = unkeyed = 0
    t0 = time.monotonic()
    ts0: float | None = None
    clock = -math.inf  # pace by the newest ts seen: sources interleave, a late line must not stall
    try:
        for line in lines:
            key, ts = key_and_ts(line)
            unkeyed += key is None
            if speed is not None and ts is not None:
                if ts0 is None:
                    ts0, t0 = ts, time.monotonic()
                if ts > clock:
                    clock = ts
                    wait = t0 + (clock - ts0) / speed - time.monotonic()
                    if wait > 0.001:
                        producer.flush()  # what is due now goes out now, not after the sleep
                        time.sleep(wait)
            try:
                producer.send(topic, key, line, on_delivery)
            except PublishError as e:
                raise ServiceError(f"publishing to {topic} at {bootstrap} failed: {e}") from None
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
        producer.flush()
        bar.update(sent % 1000)
    finally:
        bar.close()
        producer.close(10)
    return ReplayStats(sent - failed, failed, time.monotonic() - t0, first_error[0] if first_error else "", unkeyed)


def _count_lines(path: str) -> int:
    return sum(1 for _ in read_trace(path))


def _checked(path: str) -> Iterator[bytes]:
    """The trace's lines, once its first one is seen to be a record (a JSON object with a ``source``):
    replaying a SIPp CSV or a labels file by mistake must fail before anything reaches the topic."""
    lines = read_trace(path)
    first = next(lines, None)
    if first is None:
        raise NetsiamError(f"{path}: empty trace (no lines)")
    lineno, line = first
    if key_and_ts(line)[0] is None:
        hint = " (SIPp statistics: netsiam import sipp first)" if line.startswith(b"StartTime") else ""
        raise NetsiamError(f"{path}:{lineno}: not a trace record, a JSON object with source, ts and metrics{hint}")
    return itertools.chain([line], (ln for _, ln in lines))


def cli_replay(args: Any, cfg: Config) -> int:
    """``netsiam replay TRACE|- [--bootstrap H:P] [--topic T] (--speed X | --max) [--quiet]``.

    The broker and every client setting (TLS, SASL) come from ``kafka.*``; ``--bootstrap`` overrides
    only the address."""
    bootstrap = args.bootstrap or cfg.kafka.bootstrap_servers
    topic = args.topic or cfg.kafka.topics.samples
    lines = _checked(args.trace)       # a file that is no trace is refused before it is read through
    # the progress bar's total needs a first pass over the file: not for stdin, nor when quiet
    total = None if args.quiet or args.trace == STDIO else _count_lines(args.trace)
    stats = replay_lines(lines, bootstrap, topic,
                         speed=None if args.max else args.speed, kafka=cfg.kafka,
                         progress=not args.quiet, total=total)
    print(f"replay: sent {stats.sent} records to {topic} in {stats.seconds:.2f} s ({stats.rate:,.0f} records/s)"
          + (f", {stats.unkeyed} of them not records (the daemon dead-letters them)" if stats.unkeyed else "")
          + (f", {stats.failed} FAILED ({stats.error})" if stats.failed else ""), flush=True)
    return 1 if stats.failed else 0
