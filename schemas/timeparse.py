"""Timestamps: epoch seconds (number) or RFC 3339 strings, to epoch seconds (float)."""

from __future__ import annotations

import math
from datetime import datetime

__all__ = ["MAX_TS", "parse_ts"]

MAX_TS = 4102444800.0  # 2100-01-01: beyond this a timestamp is a unit mistake, not a time


def parse_ts(value: object) -> float:
    """Return epoch seconds or raise ValueError with a short reason."""
    if type(value) is float and 0.0 <= value <= MAX_TS:   # the common case, first (a record decoder's hot path)
        return value
    if isinstance(value, bool):
        raise ValueError("timestamp is a boolean")
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) > MAX_TS:
            raise ValueError(f"timestamp out of range: {str(value)[:20]}")
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            try:
                ts = float(text)  # numbers written as strings, as some CSV writers do
            except ValueError:
                raise ValueError(f"not an RFC 3339 time or epoch seconds: {value[:40]!r}") from None
        else:
            if dt.tzinfo is None:
                raise ValueError(f"RFC 3339 time without a UTC offset: {value[:40]!r}")
            ts = dt.timestamp()
    else:
        raise ValueError(f"timestamp must be a number or string, got {type(value).__name__}")
    if not math.isfinite(ts) or ts < 0 or ts > MAX_TS:
        raise ValueError(f"timestamp out of range: {ts!r}")
    return ts
