"""``netsiam dump``: what went through the broker -> a trace file and a draft labels file.

Live traffic becomes training and evaluation data: the samples topic, read from the beginning up
to its end when the dump starts, gives the records whose ``ts`` lies in ``[--from, --to)`` (every
source, or those named), one per (source, ts) (a collector's re-send after a lost ack is left out),
sorted by (ts, source), byte for byte as published. With ``--labels``, the fault events of the same
range become a labels CSV: one row per episode, from the ``raised`` event's ``started_at`` to the
``cleared`` event's ``window_end`` (an episode still active ends where the dump ends), labelled
with the fault. It is a draft: the daemon's view, to be checked and corrected before training
(e.g. ``unknown`` renamed to what it was, edges moved to where the fault really started).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from netsiam.config import KafkaConfig
from netsiam.errors import NetsiamError, ServiceError, UsageError
from netsiam.schemas.classes import VERDICTS
from netsiam.schemas.timeparse import parse_ts
from netsiam.traceio import LabelInterval, atomic_write_bytes, write_labels

__all__ = ["DumpResult", "dump", "episodes_from_events", "read_topic_values"]

log = logging.getLogger("netsiam.collect")


class DumpResult:
    def __init__(self, records: int, skipped: int, duplicates: int, episodes: int) -> None:
        self.records, self.skipped, self.duplicates, self.episodes = records, skipped, duplicates, episodes


def read_topic_values(bootstrap: str, topic: str, kafka: KafkaConfig | None = None,
                      timeout_s: float = 600.0, key: bytes | None = None) -> list[bytes]:
    """Every message value of ``topic`` (only those keyed ``key``, if given), each partition read from
    its start to the high watermark seen."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from netsiam.kafka_io import client_kwargs, quiet_kafka_logs

    quiet_kafka_logs()
    # and quieter: closing a reader cancels its metadata refresh, which kafka-python logs at ERROR;
    # a broker that is really away is raised below as ServiceError, in one line
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        c = KafkaConsumer(**client_kwargs(kafka or KafkaConfig(), bootstrap), enable_auto_commit=False,
                          request_timeout_ms=10_000)
    except KafkaError as e:
        raise ServiceError(f"cannot reach the broker at {bootstrap}: {type(e).__name__}") from None
    try:
        try:
            parts = c.partitions_for_topic(topic)
        except KafkaError as e:
            raise ServiceError(f"cannot read topic {topic} from {bootstrap}: {type(e).__name__}") from None
        if not parts:
            raise NetsiamError(f"topic {topic} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = c.poll(500)
            for msgs in got.values():
                out.extend(m.value for m in msgs if m.value is not None and (key is None or m.key == key))
            # the fetch high watermark, not ListOffsets: the embedded broker's lags (tests/conftest.py)
            if not got and all((hw := c.highwater(tp)) is not None and c.position(tp) >= hw for tp in tps):
                return out
        raise ServiceError(f"topic {topic}: not read to its end within {timeout_s:.0f} s")
    finally:
        c.close()


def _bound(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        return parse_ts(text)
    except ValueError as e:
        raise UsageError(f"bad time {text!r}: {e}") from None


def episodes_from_events(events: Sequence[dict[str, Any]], start: float, end: float,
                         sources: set[str] | None = None) -> list[LabelInterval]:
    """raised/cleared events -> one interval per episode overlapping [start, end), clipped to it."""
    eps: dict[tuple[str, str, float], list[float]] = {}
    seen: set[str] = set()
    for e in events:
        try:
            eid, src, state, fault = e["event_id"], e["source"], e["state"], e["fault"]
            began, window_end = float(e["started_at"]), float(e["window_end"])
        except (KeyError, TypeError, ValueError):
            continue
        if eid in seen or (sources and src not in sources):
            continue
        seen.add(eid)
        ep = eps.setdefault((src, fault, began), [math.nan, math.nan])
        if state == "raised":
            ep[0] = began
        elif state == "cleared":
            ep[1] = window_end
    out = []
    for (src, fault, began), (raised, cleared) in eps.items():
        first = raised if not math.isnan(raised) else began
        last = cleared if not math.isnan(cleared) else end
        lo, hi = max(first, start), min(last, end)
        if hi > lo:
            out.append(LabelInterval(src, lo, hi, fault))
    return sorted(out, key=lambda iv: (iv.source, iv.start))


def dump(bootstrap: str, topic: str, output: str, *, kafka: KafkaConfig | None = None,
         start: str | None = None, end: str | None = None, sources: Sequence[str] = (),
         faults_topic: str = "netsiam.faults", labels: str | None = None) -> DumpResult:
    lo, hi = _bound(start, 0.0), _bound(end, math.inf)
    if hi <= lo:
        raise UsageError(f"dump: --to ({hi}) must be after --from ({lo})")
    wanted = set(sources) or None
    kept: dict[tuple[str, float], tuple[float, str, bytes]] = {}
    skipped = duplicates = 0
    for value in read_topic_values(bootstrap, topic, kafka):
        try:
            obj = orjson.loads(value)
            src, ts = obj["source"], parse_ts(obj["ts"])
            if not isinstance(src, str):
                raise TypeError("source")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            skipped += 1   # not a record: the daemon dead-letters it, a dump leaves it out
            continue
        if not (lo <= ts < hi) or (wanted and src not in wanted):
            continue
        if (src, ts) in kept:
            duplicates += 1
            continue
        kept[(src, ts)] = (ts, src, value.strip())
    rows = sorted(kept.values(), key=lambda r: (r[0], r[1]))
    atomic_write_bytes(output, b"".join(v + b"\n" for _, _, v in rows))
    n_eps = 0
    said = f"dump: {len(rows)} records ({len({r[1] for r in rows})} sources) -> {output}"
    if labels:
        events = []
        for value in read_topic_values(bootstrap, faults_topic, kafka):
            try:
                events.append(orjson.loads(value))
            except orjson.JSONDecodeError:
                continue
        last = max((r[0] for r in rows), default=lo)
        eps = episodes_from_events(events, lo, hi if math.isfinite(hi) else last, wanted)
        n_eps = write_labels(labels, eps)
        verdicts = sum(iv.label in VERDICTS for iv in eps)
        said += f"; {n_eps} episodes -> {labels} (a draft: check it before training"
        if verdicts:
            said += (f"; rename its {verdicts} unknown/silent episode(s) to what they were, or delete them: "
                     "train and evaluate refuse them")
        said += ")"
    if duplicates:
        said += f"; left out {duplicates} duplicate(s)"
    if skipped:
        said += f", {skipped} message(s) that are not records"
    print(said, file=sys.stderr)
    return DumpResult(len(rows), skipped, duplicates, n_eps)
