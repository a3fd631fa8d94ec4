"""Label rows (schemas/labels.schema.json): ``source,start,end,label``."""

from __future__ import annotations

from netsiam.errors import NetsiamError
from netsiam.schemas.classes import LABEL_RULE, is_label_name
from netsiam.schemas.timeparse import parse_ts
from netsiam.traceio import LabelInterval

__all__ = ["parse_label_row"]


def parse_label_row(row: dict[str, str | None], where: str) -> LabelInterval:
    try:
        source = (row.get("source") or "").strip()
        label = (row.get("label") or "").strip()
        if not source:
            raise ValueError("empty source")
        if not is_label_name(label):
            raise ValueError(f"bad label {label!r} ({LABEL_RULE})")
        start = parse_ts((row.get("start") or "").strip())
        end = parse_ts((row.get("end") or "").strip())
        if end <= start:
            raise ValueError(f"end {end} is not after start {start}")
    except ValueError as e:
        raise NetsiamError(f"{where}: {e}") from None
    return LabelInterval(source, start, end, label)
