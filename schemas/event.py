"""Fault events (schemas/event.schema.json) and their deterministic ids."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["FaultEvent", "event_id"]

_NS = uuid.UUID("5b0f6c1e-8a0e-4f57-9d7e-6e657473696d")


def event_id(source: str, fault: str, started_at: float, state: str) -> str:
    """Same episode, same id: a replay after a crash re-publishes identical ids (consumers dedupe).

    The state is part of the id so that ``raised`` and ``cleared`` of one episode are distinct
    messages yet both derive from (source, fault, start) alone.
    """
    return str(uuid.uuid5(_NS, f"{source}|{fault}|{started_at:.3f}|{state}"))


@dataclass(frozen=True)
class FaultEvent:
    source: str
    state: str  # "raised" | "cleared"
    fault: str
    window_end: float
    detected_at: float
    started_at: float
    distance: float
    distances: dict[str, float] = field(default_factory=dict)
    embedding: tuple[float, ...] = ()
    model_version: str = ""
    # raised by a window: the inputs furthest outside normal (netsiam.evidence); else, and for an
    # artifact without normal ranges, empty
    evidence: tuple[dict[str, Any], ...] = ()

    @functools.cached_property
    def event_id(self) -> str:   # cached: the gauges and the message both need it (uuid5 is ~6 us)
        return event_id(self.source, self.fault, self.started_at, self.state)

    def to_json(self) -> dict[str, Any]:
        # spelled out, not dataclasses.asdict: that deep-copies every evidence dict, 70 of the 100 us an
        # event cost, and a cold start raises thousands at once (bench.sources)
        return {
            "event_id": self.event_id, "source": self.source, "state": self.state, "fault": self.fault,
            "window_end": self.window_end, "detected_at": self.detected_at, "started_at": self.started_at,
            "distance": self.distance, "distances": dict(self.distances), "embedding": list(self.embedding),
            "model_version": self.model_version, "evidence": [dict(e) for e in self.evidence],
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())
