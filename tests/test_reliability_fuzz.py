"""Reliability: hostile input never crashes the detector, memory stays bounded, nothing is lost.

A seeded campaign of >= 100k hostile records through the daemon's pipeline in-process (no Kafka:
the same code the daemon runs per record, minus the network), then a 5k burst through the real
daemon on the broker. Every record is either valid or dead-lettered with a known reason
(consumed == valid + dead letters), every dead letter and event serialises, the number of tracked
sources never exceeds ``detector.max_sources``, and RSS growth is bounded.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from helpers import Model, Msg, embed_all, make_config, produce, read_topic, running, value, wait_until
from prometheus_client import CollectorRegistry

from netsiam.config import Config, DetectorConfig
from netsiam.detector.metrics import DetectorMetrics
from netsiam.detector.pipeline import EventOut, Pipeline
from netsiam.features import RAW_METRICS
from netsiam.schemas.deadletter import DeadLetter
from netsiam.schemas.record import REASONS

TOPIC = "fuzz"
T0 = 1_795_384_000.0
MAX_SOURCES = 300


def _metrics(rng: random.Random) -> dict[str, Any]:
    return {m: rng.randint(0, 50) for m in RAW_METRICS}


class Hostile:
    """Seeded generator of hostile (and some valid) record values. ``steady`` sources send one valid
    sample per second so that windows, embeddings and fault events happen too."""

    def __init__(self, seed: int, giant_bytes: int = 70_000) -> None:
        self.rng = random.Random(seed)
        self.giant = giant_bytes
        self.clock = T0
        self.steady = [f"steady-{i}" for i in range(8)]
        self.n = 0

    def next(self) -> bytes | None:
        r = self.rng
        self.n += 1
        if self.n % 40 == 0:
            self.clock += 1.0
        kind = r.randrange(16)
        good: dict[str, Any] = {"source": r.choice(self.steady), "ts": self.clock, "metrics": _metrics(r)}
        if kind <= 3:                                   # valid-looking, steady sources (maybe duplicates)
            return orjson.dumps(good)
        if kind == 4:                                   # flood of new sources
            return orjson.dumps({**good, "source": f"flood-{r.getrandbits(48):x}"})
        if kind == 5:                                   # random bytes
            return bytes(r.getrandbits(8) for _ in range(r.randrange(0, 300)))
        if kind == 6:                                   # deep JSON (under and over the size limit)
            d = r.choice([50, 900, 5_000, 30_000])
            return r.choice([b"[" * d + b"]" * d, b'{"a":' * d + b"1" + b"}" * d, b"[" * d])
        if kind == 7:                                   # huge / odd numbers
            big = r.choice(["9" * 400, "1e308", "-1e308", "1e400", "-0.0", "5e-324", "9" * 5000,
                            str(2 ** 64), str(-(2 ** 63))])
            field = r.choice(["ts", "metric"])
            ms = ",".join(f'"{k}":{v}' for k, v in good["metrics"].items())
            if field == "ts":
                return f'{{"source":"{good["source"]}","ts":{big},"metrics":{{{ms}}}}}'.encode()
            return (f'{{"source":"{good["source"]}","ts":{self.clock},"metrics":{{{ms},'
                    f'"OutgoingCall":{big}}}}}').encode()
        if kind == 8:                                   # wrong types
            k = r.choice(["source", "ts", "metrics", "value"])
            bad = r.choice([None, True, 1, 1.5, "x", [], {}, [1, 2], {"a": {"b": 1}}])
            if k == "value":
                return orjson.dumps({**good, "metrics": {**good["metrics"], "OutgoingCall": bad}})
            return orjson.dumps({**good, k: bad})
        if kind == 9:                                   # unicode sources, valid and not
            src = r.choice(["sbc-é", "шлюз", "\U0001f525" * 10, "\u202eevil", "\x00", "a" * 256, "a" * 257,
                            "\\ud800", "\\udfff-x", "\\ud83d\\ude00"])
            if src.startswith("\\u"):
                ms = ",".join(f'"{k}":{v}' for k, v in good["metrics"].items())
                return f'{{"source":"{src}","ts":{self.clock},"metrics":{{{ms}}}}}'.encode()
            return orjson.dumps({**good, "source": src})
        if kind == 10:                                  # giant messages
            if r.random() < 0.05:
                return orjson.dumps({**good, "pad": "x" * self.giant})
            return orjson.dumps({**good, "metrics": {**good["metrics"], **{f"m{i}": i for i in range(600)}}})
        if kind == 11:                                  # timestamps far in the past / future / odd strings
            ts = r.choice([0, 1e-3, -1, 1e11, 4e9, T0 - 10 * 86_400, T0 + 10 * 86_400, "1970-01-01T00:00:00Z",
                           "2999-12-31T23:59:59Z", "2026-11-23T06:00:00+14:00", "not a time", "", "2026-13-45"])
            return orjson.dumps({**good, "ts": ts})
        if kind == 12:                                  # null value (tombstone)
            return None
        if kind == 13:                                  # missing / negative / NaN metrics
            ms = dict(good["metrics"])
            c = r.randrange(3)
            if c == 0:
                ms.pop(r.choice(list(ms)))
                return orjson.dumps({**good, "metrics": ms})
            if c == 1:
                ms[r.choice(list(ms))] = -r.randint(1, 10)
                return orjson.dumps({**good, "metrics": ms})
            return orjson.dumps(good).replace(b'"OutgoingCall":', b'"OutgoingCall":NaN,"x":', 1)
        if kind == 14:                                  # truncated JSON
            b = orjson.dumps(good)
            return b[: r.randrange(1, len(b))]
        return orjson.dumps({**good, "ts": self.clock - r.choice([1, 5, 100])})  # late samples


def _rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def _check_outbox(p: Pipeline) -> tuple[int, int, dict[str, int]]:
    """Serialise everything in the outbox as the daemon would; returns (dead letters, events, reasons)."""
    dl = ev = 0
    reasons: dict[str, int] = {}
    for item in p.take_outbox():
        if isinstance(item, DeadLetter):
            assert item.reason in REASONS and item.detail, item
            j = orjson.loads(item.to_bytes(1.0))
            assert j["reason"] == item.reason
            reasons[item.reason] = reasons.get(item.reason, 0) + 1
            dl += 1
        else:
            assert isinstance(item, EventOut)
            item.event.source.encode()   # the Kafka key
            item.event.to_bytes()
            ev += 1
    return dl, ev, reasons


def test_100k_hostile_records_through_the_pipeline(model: Model) -> None:
    cfg = Config(detector=DetectorConfig(max_sources=MAX_SOURCES, idle_evict_s=120.0))
    reg = CollectorRegistry()
    p = Pipeline(cfg, model.fake(), DetectorMetrics(reg))
    gen = Hostile(seed=20261123)
    n_total, chunk, parts = 100_000, 1_000, 2
    offsets = [0] * parts
    dead = events = 0
    reasons: dict[str, int] = {}
    rss0 = 0
    max_tracked = 0
    for c in range(n_total // chunk):
        by_part: dict[int, list[Msg]] = {i: [] for i in range(parts)}
        for _ in range(chunk):
            v = gen.next()
            part = zlib.crc32(v or b"") % parts
            by_part[part].append(Msg(TOPIC, part, offsets[part], 0, None, v))
            offsets[part] += 1
        for part, msgs in by_part.items():
            p.feed((TOPIC, part), msgs)
        max_tracked = max(max_tracked, len(p.sources))
        embed_all(p)
        d, e, r = _check_outbox(p)
        dead, events = dead + d, events + e
        for k, n in r.items():
            reasons[k] = reasons.get(k, 0) + n
        if c == 20:
            rss0 = _rss_bytes()
    consumed = reg.get_sample_value("netsiam_records_consumed_total")
    valid = reg.get_sample_value("netsiam_records_valid_total")
    assert consumed == n_total
    assert consumed == valid + dead, (consumed, valid, dead, reasons)
    assert max_tracked <= MAX_SOURCES
    assert valid > 10_000 and events > 0, (valid, events)       # the campaign exercised windows too
    # every hostile family was seen and classified
    for reason in ("not_json", "too_large", "schema", "missing_feature", "non_finite", "negative_counter",
                   "bad_timestamp", "duplicate", "out_of_order"):
        assert reasons.get(reason, 0) > 0, (reason, reasons)
    growth = _rss_bytes() - rss0
    assert growth < 64 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 80k records"


def test_poison_records_found_by_the_fuzz_are_dead_lettered(model: Model) -> None:
    """Regression: before the fix these escaped Pipeline.feed (OverflowError) or crashed the publish
    step (UnicodeEncodeError on the Kafka key, orjson on the dead letter), i.e. a crash loop."""
    ms = ",".join(f'"{k}":1' for k in RAW_METRICS)
    cases = {
        f'{{"source":"x","ts":{T0},"metrics":{{{ms},"OutgoingCall":{"9" * 400}}}}}': "non_finite",
        f'{{"source":"x","ts":{"9" * 400},"metrics":{{{ms}}}}}': "bad_timestamp",
        f'{{"source":"\\ud800x","ts":{T0},"metrics":{{{ms}}}}}': "schema",
    }
    p = Pipeline(Config(), model.fake())
    msgs = [Msg(TOPIC, 0, i, 0, None, v.encode()) for i, v in enumerate(cases)]
    msgs += [Msg(TOPIC, 0, len(msgs), 0, None, msgs[-1].value)]  # twice: would have been a "duplicate"
    p.feed((TOPIC, 0), msgs)
    got = [(o.offset, o.reason) for o in p.take_outbox() if isinstance(o, DeadLetter)]
    assert got == [(0, "non_finite"), (1, "bad_timestamp"), (2, "schema"), (3, "schema")]
    assert not p.sources


def test_a_checker_that_fails_costs_its_record_not_the_stream(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: whatever the record checks raise on some bytes, ``decode_record`` says so as a
    RecordError, so the daemon dead-letters that record (its bytes kept, the exception named) and goes on
    with the next instead of crashing on it at every restart."""
    import netsiam.schemas.record as record

    def broken(obj: Any, names: Any, required: Any) -> Any:
        raise KeyError("injected")

    monkeypatch.setattr(record, "validate_record_obj", broken)
    full = ",".join(f'"{k}":1' for k in RAW_METRICS)
    short = ",".join(f'"{k}":1' for k in RAW_METRICS[1:])   # fails the fast path, reaches the checks
    values = [f'{{"source":"x","ts":{T0 + i},"metrics":{{{full if i else short}}}}}'.encode() for i in range(2)]
    p = Pipeline(Config(), model.fake())
    p.feed((TOPIC, 0), [Msg(TOPIC, 0, i, 0, None, v) for i, v in enumerate(values)])
    dead = [o for o in p.take_outbox() if isinstance(o, DeadLetter)]
    assert [(d.offset, d.reason, d.value) for d in dead] == [(0, "schema", values[0])]
    assert "KeyError: 'injected'" in dead[0].detail
    assert list(p.sources) == ["x"]   # the next record was read


@pytest.mark.slow
def test_hostile_burst_through_the_real_daemon(broker: Any, topics: Any, model_dir: Path) -> None:
    gen = Hostile(seed=7, giant_bytes=90_000)
    values = [gen.next() for _ in range(5_000)]
    keys = [zlib.crc32(v or b"null").to_bytes(4, "big") for v in values]
    produce(broker.bootstrap, topics.samples, values, keys=keys)
    cfg = make_config(broker, topics, max_sources=MAX_SOURCES)
    with running(cfg, model_dir) as d:
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= len(values), 60, "all consumed")
        consumed = value(d, "netsiam_records_consumed_total")
        valid = value(d, "netsiam_records_valid_total")
        invalid = sum(value(d, "netsiam_records_invalid_total", reason=r) for r in REASONS)
        dead = read_topic(broker.bootstrap, topics.deadletter, until=lambda m: len(m) >= consumed - valid,
                          timeout_s=60)
        assert value(d, "netsiam_sources_tracked") <= MAX_SOURCES
        assert d.ready()[0]
    assert consumed == len(values) == valid + len(dead) == valid + invalid
    for m in dead:
        assert orjson.loads(m.value)["reason"] in REASONS
