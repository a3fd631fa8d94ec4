"""Label rows (schemas/labels.schema.json): ``source,start,end,label``."""

from __future__ import annotations

import re

from netsiam.errors import NetsiamError
from netsiam.schemas.timeparse import parse_ts
from netsiam.traceio import LabelInterval

__all__ = ["parse_label_row"]

_LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def parse_label_row(row: dict[str, str | None], where: str) -> LabelInterval:
    try:
        source = (row.get("source") or "").strip()
        label = (row.get("label") or "").strip()
        if not source:
            raise ValueError("empty source")
        if not _LABEL_RE.match(label):
            raise ValueError(f"bad label {label!r} (letters, digits, _ . -; starts with a letter)")
        start = parse_ts((row.get("start") or "").strip())
        end = parse_ts((row.get("end") or "").strip())
        if end <= start:
            raise ValueError(f"end {end} is not after start {start}")
    except ValueError as e:
        raise NetsiamError(f"{where}: {e}") from None
    return LabelInterval(source, start, end, label)
