"""Decode and validate signalling records (schemas/record.schema.json) on the daemon's hot path.

A well-formed record is decoded and range-checked in one C call (msgspec, against a typed struct),
about half the time of orjson plus the checks below. Anything that call refuses goes through orjson
and hand-written checks equivalent to the JSON Schema (tests compare them with jsonschema on generated
records, and the two paths with each other), which say exactly why: a full JSON Schema validator per
record costs ~50x more.
Rejections raise :class:`RecordError` with a machine-readable ``reason`` the dead-letter topic uses.
Only the metrics the model needs (``required``) are checked strictly; any other metric with a value
out of range (SIPp writes int64 sentinels such as 9.223372036854776e+18 into statistics the model
never reads) is ignored and counted in :attr:`DecodedRecord.ignored`, never a reason to refuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple, cast

import msgspec
import orjson

from netsiam.schemas.timeparse import parse_ts

__all__ = ["REASONS", "RECORD_REASONS", "DecodedRecord", "RecordError", "decode_record", "source_problem",
           "validate_record_obj"]

# Every reason a message can be dead-lettered for (a Prometheus label value, keep the set small): a record's
# (RECORD_REASONS, the daemon's), and a feedback message's (not_json or schema as a record's, or refused).
REASONS: tuple[str, ...] = (
    "not_json",          # undecodable bytes or invalid JSON
    "too_large",         # message over detector.max_record_bytes
    "schema",            # wrong shape or types
    "missing_feature",   # a metric the model needs is absent
    "non_finite",        # NaN or +/-inf
    "negative_counter",  # a metric below zero
    "bad_timestamp",     # unparsable or out of range
    "duplicate",         # same source and sample interval seen before
    "out_of_order",      # older than the source's last sample, or too far from the stream clock
    "refused",           # a feedback message `netsiam learn` could not apply (unknown event, too few windows, ...)
)
RECORD_REASONS: tuple[str, ...] = tuple(r for r in REASONS if r != "refused")

MAX_SOURCE_LEN = 256
MAX_METRICS = 512
# No signalling counter or gauge reaches 1e15 per interval; larger values are a producer's overflow
# and would overflow the derived features (ratios) to inf/NaN downstream.
MAX_METRIC = 1e15


class _WellFormed(msgspec.Struct):
    """A record every check passes (extra top-level keys ignored, as the checks below ignore them)."""

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SOURCE_LEN)]
    ts: float | str
    metrics: Annotated[dict[str, Annotated[float, msgspec.Meta(ge=0, le=MAX_METRIC)]],
                       msgspec.Meta(max_length=MAX_METRICS)]


_WELL_FORMED = msgspec.json.Decoder(_WellFormed)


class RecordError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in RECORD_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DecodedRecord(NamedTuple):   # a NamedTuple: built per record, 3x cheaper than a frozen dataclass
    source: str
    ts: float
    values: tuple[float, ...]  # in the order of the ``names`` given to decode_record
    ignored: int = 0           # metrics the model does not need whose value was out of range (left out)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN/Infinity/1e400 outright; the stdlib reads them so they can be reported as
    # non_finite (a clearer reason for a producer's bug than "not JSON"). Only bad input pays this.
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise RecordError("not_json", str(e).splitlines()[0][:120]) from None


def validate_record_obj(obj: Any, names: Sequence[str], required: frozenset[str]) -> DecodedRecord:
    """Check a parsed record; return the values of ``names`` (absent, not required -> 0.0)."""
    if not isinstance(obj, dict):
        raise RecordError("schema", f"record must be an object, got {type(obj).__name__}")
    source = obj.get("source")
    if not isinstance(source, str):
        raise RecordError("schema", _SOURCE_RULE)
    why = source_problem(source)
    if why is not None:
        raise RecordError("schema", why)
    if "ts" not in obj:
        raise RecordError("schema", "'ts' is missing")
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        raise RecordError("schema", "'metrics' must be an object")
    if len(metrics) > MAX_METRICS:
        raise RecordError("schema", f"'metrics' has more than {MAX_METRICS} entries")
    ts_raw = obj["ts"]
    if isinstance(ts_raw, float) and not math.isfinite(ts_raw):
        raise RecordError("non_finite", "'ts' is not finite")
    try:
        ts = parse_ts(ts_raw)
    except ValueError as e:
        raise RecordError("bad_timestamp", str(e)) from None
    ignored: set[str] = set()
    for key, v in metrics.items():
        t = type(v)
        if (t is int or t is float) and 0 <= v <= MAX_METRIC:
            continue   # the usable value, inline: a call per metric was most of this function's time
        problem = _problem(key, v)   # NaN fails both comparisons above and is caught here
        if problem is not None:
            if key in required:
                raise problem
            ignored.add(key)
    get = metrics.get
    values: tuple[Any, ...] = tuple(map(get, names))
    if None in values or ignored:
        values = tuple(_value_or_default(get(n), n, ignored, required) for n in names)
    return DecodedRecord(source, ts, tuple(map(float, values)), len(ignored))


_SOURCE_RULE = f"'source' must be a string of 1..{MAX_SOURCE_LEN} characters"


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot name a record's element, or None (the importers and collectors check their
    ``--source`` with it, so they never write a record the daemon refuses)."""
    if not source or len(source) > MAX_SOURCE_LEN:
        return _SOURCE_RULE
    if not _unicode_ok(source):
        # a lone surrogate (\ud800) parses but cannot be a Kafka key or go into a JSON event or report
        return "'source' is not valid Unicode (lone surrogate)"
    return None


def _unicode_ok(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def _value_or_default(v: Any, name: str, ignored: set[str], required: frozenset[str]) -> Any:
    """A metric's value, or 0.0 for an absent or ignored one the model does not need."""
    if v is None or name in ignored:
        if name in required:
            raise RecordError("missing_feature", f"metric {name!r} is missing")
        return 0.0
    return v


def _problem(key: Any, v: Any) -> RecordError | None:
    """Why a metric value is out of range, or None when it is a usable one."""
    if type(v) is not int and type(v) is not float:  # bool is an int subclass: refuse it too
        return RecordError("schema", f"metric {str(key)[:64]!r} must be a number, got {type(v).__name__}")
    # ints are arbitrary precision: compare before any float conversion (400 digits overflow it)
    if v > MAX_METRIC or (type(v) is float and not math.isfinite(v)):
        return RecordError("non_finite", f"metric {str(key)[:64]!r} is {str(v)[:24]} (finite, <= {MAX_METRIC:g} required)")
    if v < 0:
        return RecordError("negative_counter", f"metric {str(key)[:64]!r} is {v}")
    return None


def decode_record(
    raw: bytes, names: Sequence[str], required: frozenset[str], max_bytes: int = 65_536
) -> DecodedRecord:
    """Bytes -> validated record, or RecordError(reason): the only exception it raises, whatever the bytes."""
    if len(raw) > max_bytes:
        raise RecordError("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        rec = _WELL_FORMED.decode(raw)
        values = tuple(map(rec.metrics.get, names))
        if None not in values and _unicode_ok(rec.source):   # else the checks below say why not
            return DecodedRecord(rec.source, parse_ts(rec.ts), cast(tuple[float, ...], values))
    except Exception:   # msgspec.DecodeError, parse_ts's ValueError, a RecursionError into an unknown key's
        pass            # nested value, or anything else: the checks below say why, or accept what this refused
    try:
        return validate_record_obj(_loads(raw), names, required)
    except RecordError:
        raise
    except OverflowError as e:  # an integer beyond float64 (e.g. 400 digits) in a check the fuzz has not met
        raise RecordError("non_finite", "a number is beyond the float64 range") from e
    except Exception as e:      # a checker bug costs this record (kept in its dead letter), not a crash loop on it
        raise RecordError("schema", f"the checker failed on it ({type(e).__name__}: {str(e)[:80]}); "
                                    "please report this record") from e
