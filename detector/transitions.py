"""A source's raised/cleared transitions -> fault events for the outbox, and the fault gauges.

Windows make transitions through the debounce (:meth:`~netsiam.detector.pipeline.Pipeline.apply`);
markers make them without a window (:func:`marker_transitions`): a source went silent, was heard
again, or is forgotten. Gauges follow every transition of a live state, events only those at or past
the committed offset (a replay below it rebuilds state silently).

Evidence (:mod:`netsiam.evidence`) is derived only for a window that raises a fault (rare: the hot
path derives nothing more), and travels in the raised event and the ``netsiam_fault_evidence_info``
series. A cleared event carries none: the window that clears looks normal, so its "evidence" would
only say that, and a clear caused by a marker has no window at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netsiam.debounce import Transition
from netsiam.evidence import NormalRange, evidence, evidence_text, window_evidence
from netsiam.schemas.classes import SILENT
from netsiam.schemas.deadletter import DeadLetter
from netsiam.schemas.event import FaultEvent

from .batch import SILENT_CLEARED, SILENT_RAISED, Marker, WindowRef
from .metrics import DetectorMetrics
from .sources import TP, SourceState

__all__ = ["Emitter", "EventOut", "Explain", "explainer", "marker_transitions"]

Explain = Callable[[], list[dict[str, Any]]]   # -> the evidence of the window that made the transitions


@dataclass(frozen=True, slots=True)
class EventOut:
    """A fault event to publish, with the record that caused it (for latency and commits)."""

    event: FaultEvent
    tp: TP
    offset: int
    record_ts_ms: int


def marker_transitions(mk: Marker) -> list[Transition]:
    """Apply a marker to its source's state; the transitions it makes, in order."""
    st = mk.state
    if mk.kind == SILENT_RAISED:
        out = st.tracker.release(mk.window_end)   # the named fault ends: nothing judges the source now
        st.epoch = None                            # a new tracker is quiet: a replay may start here
        out.append(Transition("raised", SILENT, mk.started_at, mk.window_end))
        st.silent_fault = mk.started_at
        return out
    if mk.kind == SILENT_CLEARED:
        st.silent_fault = None
        return [Transition("cleared", SILENT, mk.started_at, mk.window_end)]
    out = []  # EVICTED: whatever is active ends before the state goes
    if st.silent_fault is not None:
        out.append(Transition("cleared", SILENT, st.silent_fault, mk.window_end))
        st.silent_fault = None
    return out + st.tracker.release(mk.window_end)


def explainer(raw: np.ndarray, x: np.ndarray | None, artifact: Any, ranges: Mapping[str, NormalRange]) -> Explain:
    """The evidence of a window under ``ranges`` (the artifact's), computed only if called: from its
    model inputs ``x`` (T, F) when the batch kept them, else derived from the raw window (T, R)."""
    if x is not None:
        return lambda: evidence(x, artifact.features, ranges) if ranges else []
    return lambda: window_evidence(raw, artifact.features, getattr(artifact, "manifest", None))


class Emitter:
    """Fault events into ``outbox`` and the ``netsiam_fault_active`` / ``netsiam_active_faults`` /
    ``netsiam_fault_evidence_info`` gauges."""

    def __init__(self, metrics: DetectorMetrics, outbox: list[DeadLetter | EventOut], wall: Callable[[], float]) -> None:
        self.metrics = metrics
        self.outbox = outbox
        self.wall = wall

    def gauges(self, source: str, fault: str, on: bool, evidence: str = "", event: str = "") -> None:
        if on:
            self.metrics.raised.set(source, fault, evidence, event)
        else:
            self.metrics.raised.clear(source, fault)

    def clear_gauges(self, st: SourceState) -> None:
        """The state is dropped without events (its partition went to another consumer)."""
        if st.tracker.active is not None:
            self.gauges(st.name, st.tracker.active, False)
        if st.silent_fault is not None:
            self.gauges(st.name, SILENT, False)

    def emit(self, st: SourceState, trans: Sequence[Transition], cause: WindowRef | Marker, version: str,
             distance: float = 0.0, distances: dict[str, float] | None = None,
             emb: tuple[float, ...] = (), explain: Explain | None = None) -> int:
        """Gauges and events for ``trans``. Without a window (a marker) an event has distance 0, no
        distances, an empty embedding and no evidence. ``explain`` is called at most once, for a raise.
        Returns the number of events put in the outbox."""
        now = self.wall()
        n = 0
        found: tuple[dict[str, Any], ...] | None = None
        for t in trans:
            evidence: tuple[dict[str, Any], ...] = ()
            if t.state == "raised" and explain is not None and (st.alive or cause.live):
                if found is None:
                    found = tuple(explain())
                evidence = found
            if not (st.alive or cause.live):
                continue
            ev = FaultEvent(source=st.name, state=t.state, fault=t.fault, window_end=t.window_end,
                            detected_at=now, started_at=t.started_at, distance=distance,
                            distances=distances or {}, embedding=emb, model_version=version, evidence=evidence)
            if st.alive:
                raised = t.state == "raised"
                self.gauges(st.name, t.fault, raised, evidence_text(evidence), ev.event_id if raised else "")
            if cause.live:
                self.outbox.append(EventOut(ev, cause.tp, cause.offset, cause.kafka_ts_ms))
                n += 1
        return n
