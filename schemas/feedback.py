"""Feedback messages (schemas/feedback.schema.json): an operator relabels a raised fault event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from netsiam.errors import NetsiamError
from netsiam.schemas.classes import LABEL_RULE, SILENT, UNKNOWN, is_label_name

__all__ = ["Feedback", "FeedbackError", "parse_feedback"]

_FIELDS = {"event_id", "label", "by", "note"}


class FeedbackError(NetsiamError):
    """A message that is not feedback; ``reason`` is its dead-letter reason (``not_json`` or ``schema``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Feedback:
    event_id: str
    label: str
    by: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if not self.event_id or len(self.event_id) > 128:
            raise FeedbackError("schema", "event_id must be 1-128 characters")
        if not is_label_name(self.label):
            raise FeedbackError("schema", f"bad label {self.label!r} ({LABEL_RULE})")
        if self.label in (UNKNOWN, SILENT):
            raise FeedbackError("schema", f"{self.label!r} is the detector's verdict, not a label")
        if len(self.by) > 256 or len(self.note) > 4096:
            raise FeedbackError("schema", "'by' is at most 256 characters, 'note' 4096")

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "label": self.label, "by": self.by, "note": self.note}


def parse_feedback(data: bytes) -> Feedback:
    """One message's bytes -> Feedback, or NetsiamError saying what is wrong."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise FeedbackError("not_json", f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise FeedbackError("schema", "not a JSON object")
    extra = set(obj) - _FIELDS
    if extra:
        raise FeedbackError("schema", f"unknown field(s) {sorted(extra)}")
    for key in ("event_id", "label"):
        if key not in obj:
            raise FeedbackError("schema", f"missing {key!r}")
    if not all(isinstance(obj.get(k, ""), str) for k in _FIELDS):
        raise FeedbackError("schema", "every field is a string")
    return Feedback(obj["event_id"], obj["label"], obj.get("by", ""), obj.get("note", ""))
