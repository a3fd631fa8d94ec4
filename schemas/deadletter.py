"""Dead letters (schemas/deadletter.schema.json): a rejected record, its original bytes and why.

One JSON object per rejected record on the dead-letter topic, keyed by the record's own key (dead
letters of one source stay together)::

    {"reason": "not_json", "detail": "...", "topic": "netsiam.samples", "partition": 0,
     "offset": 123, "timestamp_ms": 1795384000123, "source": "sbc-1" | null,
     "key_b64": "c2JjLTE=" | null, "value_b64": "<the original bytes, base64>" | null,
     "value_size": 57, "detected_at": 1795384000.2}

``source`` is known only for reasons found after decoding (``duplicate``, ``out_of_order``); a null
value (tombstone) has ``value_b64`` null and ``value_size`` 0.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from netsiam.schemas.record import REASONS

__all__ = ["DeadLetter", "validate_dead_letter"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record; :meth:`to_bytes` is the dead-letter message value."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    reason: str               # one of netsiam.schemas.record.REASONS
    detail: str
    source: str | None = None

    def to_json(self, detected_at: float) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "source": self.source,
            "key_b64": None if self.key is None else base64.b64encode(self.key).decode(),
            "value_b64": None if self.value is None else base64.b64encode(self.value).decode(),
            "value_size": 0 if self.value is None else len(self.value),
            "detected_at": detected_at,
        }

    def to_bytes(self, detected_at: float) -> bytes:
        return orjson.dumps(self.to_json(detected_at))


_INTS = ("partition", "offset", "timestamp_ms", "value_size")


def validate_dead_letter(obj: Any) -> None:
    """Raise ValueError unless ``obj`` (a parsed dead letter) follows the contract above."""
    if not isinstance(obj, dict):
        raise ValueError(f"a dead letter is an object, got {type(obj).__name__}")
    want = {"reason", "detail", "topic", "source", "key_b64", "value_b64", "detected_at", *_INTS}
    if set(obj) != want:
        raise ValueError(f"fields differ from the contract: missing {sorted(want - set(obj))}, "
                         f"extra {sorted(set(obj) - want)}")
    if obj["reason"] not in REASONS:
        raise ValueError(f"unknown reason {obj['reason']!r}")
    for name in ("detail", "topic"):
        if not isinstance(obj[name], str) or not obj[name]:
            raise ValueError(f"{name!r} must be a non-empty string")
    for name in _INTS:
        if type(obj[name]) is not int or obj[name] < (-1 if name == "timestamp_ms" else 0):
            raise ValueError(f"{name!r} must be an integer >= {-1 if name == 'timestamp_ms' else 0}")
    if type(obj["detected_at"]) not in (int, float) or obj["detected_at"] < 0:
        raise ValueError("'detected_at' must be a number >= 0")
    if obj["source"] is not None and (not isinstance(obj["source"], str) or not obj["source"]):
        raise ValueError("'source' must be a non-empty string or null")
    for name in ("key_b64", "value_b64"):
        if obj[name] is not None:
            try:
                base64.b64decode(obj[name], validate=True)
            except (binascii.Error, TypeError):
                raise ValueError(f"{name!r} must be base64 or null") from None
    size = 0 if obj["value_b64"] is None else len(base64.b64decode(obj["value_b64"]))
    if obj["value_size"] != size:
        raise ValueError(f"'value_size' {obj['value_size']} is not the size of the value ({size})")
