"""Events and episodes: replay the daemon's debounce over per-window classes, match the events to
labelled fault episodes, and score what an operator judges.

* :func:`detect_events` runs one :class:`netsiam.debounce.FaultTracker` per source over its windows in
  ``end_ts`` order, exactly as the daemon does; :func:`debounce_givens` reads what the daemon gives it beside
  each window's class from an artifact (``evaluate``, feedback and the tests' daemon-equals-offline checks).
* :func:`match_episodes`: an event belongs to an episode when its ``[started_at, end]`` overlaps the
  episode or it is raised within ``[start, end + grace]``. Per episode: the first fault raised
  (``detected_label``), every fault raised (``raised``), the delay from the episode's start to the
  first raise, and when the last of its events cleared relative to the episode's end (``clear_s``).
  An event that belongs to no episode is a false raise.
* :func:`score_detection` sums that up for one detector (the encoder, or a baseline fed the same
  windows): first-label accuracy, episodes raised exactly once, median/max delay, median/max clear
  time, false raises per hour of normal-labelled stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netsiam.config import DebounceConfig
from netsiam.debounce import FaultTracker
from netsiam.givens import Givens, feed_window, read_givens, slow_run_stride
from netsiam.schemas.classes import NORMAL, UNKNOWN
from netsiam.slowanswers import flag_trace
from netsiam.traceio import LabelInterval

__all__ = ["GRACE_S", "Detected", "Episode", "Event", "Givens", "alarm_share", "debounce_givens", "detect_events",
           "episodes_from_intervals", "episodes_from_windows", "false_alarms_per_hour", "givens_events", "match_episodes",
           "score_detection"]


@dataclass(frozen=True)
class Event:
    """One raised fault as the daemon would publish it, with when it cleared (None: still active)."""

    source: str
    fault: str
    started_at: float
    raised_at: float          # window_end of the raising window
    cleared_at: float | None
    end: float                # cleared_at, or the source's last window end when still active


@dataclass(frozen=True)
class Episode:
    """A labelled fault: a contiguous interval of one non-normal label on one source."""

    source: str
    label: str
    start: float
    end: float


def detect_events(sources: np.ndarray, end_ts: np.ndarray, classes: np.ndarray,
                  debounce: DebounceConfig, nearest: np.ndarray | None = None,
                  within: np.ndarray | None = None, in_range: np.ndarray | None = None,
                  added: np.ndarray | None = None, held: Sequence[frozenset[str]] | None = None,
                  marked: Sequence[frozenset[str]] | None = None, slow: np.ndarray | None = None) -> list[Event]:
    """Run one FaultTracker per source over its windows in ``end_ts`` order (the daemon's loop)."""
    events: list[Event] = []
    for src in sorted(set(sources.tolist())):
        idx = np.flatnonzero(sources == src)
        idx = idx[np.argsort(end_ts[idx], kind="stable")]
        tracker = FaultTracker(debounce)
        open_: dict[str, tuple[float, float]] = {}   # fault -> (started_at, raised_at)
        last_t = float(end_ts[idx[-1]])
        for k in idx:
            for tr in feed_window(tracker, int(k), float(end_ts[k]), classes, nearest, within, in_range, added, held,
                                  marked, slow):
                if tr.state == "raised":
                    open_[tr.fault] = (tr.started_at, tr.window_end)
                else:
                    started, raised = open_.pop(tr.fault)
                    events.append(Event(src, tr.fault, started, raised, tr.window_end, tr.window_end))
        for fault, (started, raised) in open_.items():
            events.append(Event(src, fault, started, raised, None, last_t))
    return sorted(events, key=lambda e: (e.source, e.raised_at))


def debounce_givens(art: Any, sources: np.ndarray, end_ts: np.ndarray, raw: np.ndarray, x: np.ndarray,
                    emb: np.ndarray, debounce: DebounceConfig, features: Sequence[str] | None = None) -> Givens:
    """Windows (raw (N, T, R), their inputs ``x`` (N, T, F) under ``features``, default the artifact's, embedded
    ``emb``) of whole traces -> what the daemon serving ``art`` gives its debounce for each: one reading of the
    artifact for every offline judge, so each judges as the daemon acts."""
    names, _, dists = art.prototypes.classify(emb)
    slow = np.zeros(len(names), dtype=np.int32)
    names = flag_trace(names, sources, raw, end_ts, debounce, getattr(art, "manifest", None), slow=slow,
                       stride=slow_run_stride(art))
    return read_givens(art, names, slow, dists, x, raw, debounce, features)


def givens_events(sources: np.ndarray, end_ts: np.ndarray, g: Givens, debounce: DebounceConfig) -> list[Event]:
    """:func:`detect_events` over what :func:`debounce_givens` read."""
    return detect_events(sources, end_ts, g.classes, debounce, g.nearest, g.within, g.in_range, g.added, g.held,
                         g.marked, g.slow)


def episodes_from_intervals(intervals: Sequence[LabelInterval]) -> list[Episode]:
    """Non-normal label intervals, with touching/overlapping ones of the same label merged."""
    eps: list[Episode] = []
    for iv in sorted(intervals, key=lambda v: (v.source, v.label, v.start)):
        if iv.label == NORMAL:
            continue
        last = eps[-1] if eps else None
        if last and last.source == iv.source and last.label == iv.label and iv.start <= last.end:
            eps[-1] = Episode(last.source, last.label, last.start, max(last.end, iv.end))
        else:
            eps.append(Episode(iv.source, iv.label, iv.start, iv.end))
    return sorted(eps, key=lambda e: (e.source, e.start))


def episodes_from_windows(sources: np.ndarray, end_ts: np.ndarray, labels: np.ndarray,
                          interval_s: float) -> list[Episode]:
    """Fallback without label intervals: runs of one non-normal label in consecutive windows of a
    source, from the first such window's end to one interval past the last one's end."""
    eps: list[Episode] = []
    for src in sorted(set(sources.tolist())):
        idx = np.flatnonzero(sources == src)
        idx = idx[np.argsort(end_ts[idx], kind="stable")]
        run: list[int] = []
        for k in [*idx.tolist(), -1]:
            if run and (k < 0 or labels[k] != labels[run[0]]):
                if labels[run[0]] != NORMAL:
                    eps.append(Episode(src, str(labels[run[0]]), float(end_ts[run[0]]),
                                       float(end_ts[run[-1]]) + interval_s))
                run = []
            if k >= 0:
                run.append(k)
    return eps


def _matches(ev: Event, ep: Episode, grace_s: float, next_start: float) -> bool:
    overlaps = ev.started_at <= ep.end and ev.end >= ep.start
    raised_in = ep.start <= ev.raised_at <= ep.end + grace_s
    # raised once the source's next episode has begun: that episode's event, not a late raise of this one
    return ev.source == ep.source and (overlaps or raised_in) and ev.raised_at < next_start


def _next_starts(episodes: Sequence[Episode]) -> list[float]:
    """Per episode, the start of the next episode of the same source (inf for the last)."""
    starts: dict[str, list[float]] = {}
    for ep in episodes:
        starts.setdefault(ep.source, []).append(ep.start)
    return [min((s for s in starts[ep.source] if s > ep.start), default=np.inf) for ep in episodes]


def match_episodes(episodes: Sequence[Episode], events: Sequence[Event], grace_s: float,
                   classes: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], list[bool]]:
    """-> (one report entry per episode, per event whether it detected any episode).

    The detecting event is the first matching one raised at or after the episode start; failing
    that, one already active when the episode began (``delay_s`` 0, ``already_active``).
    ``label_correct``: some matching event names the episode's label -- or ``unknown`` for a label
    outside ``classes`` (when given), the right answer for a fault the model never learnt.
    """
    by_src: dict[str, list[int]] = {}
    for n, ev in enumerate(events):
        by_src.setdefault(ev.source, []).append(n)
    useful = [False] * len(events)
    out: list[dict[str, Any]] = []
    for ep, next_start in zip(episodes, _next_starts(episodes), strict=True):
        hits = [n for n in by_src.get(ep.source, []) if _matches(events[n], ep, grace_s, next_start)]
        for n in hits:
            useful[n] = True
        hits.sort(key=lambda n: events[n].raised_at)
        later = [n for n in hits if events[n].raised_at >= ep.start]
        first = events[later[0]] if later else (events[hits[0]] if hits else None)
        want = ep.label if classes is None or ep.label in classes else UNKNOWN
        out.append({
            "source": ep.source, "label": ep.label, "start": ep.start, "end": ep.end,
            "detected": first is not None,
            "detected_label": first.fault if first else None,
            "delay_s": max(0.0, first.raised_at - ep.start) if first else None,
            "already_active": bool(first is not None and first.raised_at < ep.start),
            "label_correct": any(events[n].fault == want for n in hits),
            "first_label_correct": first is not None and first.fault == want,
            "raised": [events[n].fault for n in hits],
            "clear_s": _clear_s(ep, [events[n] for n in hits]),
        })
    return out, useful


def _clear_s(ep: Episode, hits: Sequence[Event]) -> float | None:
    """Seconds from the episode's end to the clear of its last event (negative: cleared before the
    end); None when nothing was raised or an event was still active when the stream ended."""
    if not hits or any(ev.cleared_at is None for ev in hits):
        return None
    return max(float(ev.cleared_at) for ev in hits if ev.cleared_at is not None) - ep.end


def false_alarms_per_hour(n_false: int, normal_hours: float) -> float | None:
    return n_false / normal_hours if normal_hours > 0 else None


def alarm_share(sources: np.ndarray, end_ts: np.ndarray, events: Sequence[Event]) -> float | None:
    """Share of the given windows that end while an alarm is up (``raised_at <= t < cleared_at``).

    Fed the normal-labelled windows it exposes an alarm that never clears: one endless event
    overlaps every episode, so it "detects" them all and counts as a single false alarm.
    """
    if len(end_ts) == 0:
        return None
    up = np.zeros(len(end_ts), dtype=bool)
    for ev in events:
        until = np.inf if ev.cleared_at is None else ev.cleared_at
        up |= (sources == ev.source) & (end_ts >= ev.raised_at) & (end_ts < until)
    return float(up.mean())


# An event raised this long after an episode ended still belongs to it (a late raise, and a second raise
# if one came before); later it is a false raise. Fixed, not a window span: windows end every second, and
# an operator judges a raise 10 s after a fault ended as late whatever the window length.
GRACE_S = 10.0


def _median(v: Sequence[float]) -> float | None:
    return float(np.median(v)) if len(v) else None


def _max(v: Sequence[float]) -> float | None:
    return float(np.max(v)) if len(v) else None


# what score_detection returns: (summary, per-episode entries, events raised and cleared)
Detected = tuple[dict[str, Any], list[dict[str, Any]], list[Event]]


def score_detection(sources: np.ndarray, end_ts: np.ndarray, classes: np.ndarray, labels: np.ndarray,
                    episodes: Sequence[Episode], debounce: DebounceConfig, grace_s: float, seconds_per_window: float,
                    known: Sequence[str] | None = None, nearest: np.ndarray | None = None,
                    within: np.ndarray | None = None, in_range: np.ndarray | None = None,
                    added: np.ndarray | None = None, held: Sequence[frozenset[str]] | None = None,
                    marked: Sequence[frozenset[str]] | None = None, slow: np.ndarray | None = None
                    ) -> Detected:
    """One detector's per-window ``classes`` -> (summary, per-episode entries, events).

    ``labels`` (the windows' own labels) give the hours of normal stream the false raises are divided
    by; ``known``: the detector's classes (an episode of another label is right when raised ``unknown``).
    """
    events = detect_events(np.asarray(sources), np.asarray(end_ts, np.float64), np.asarray(classes), debounce, nearest,
                           within, in_range, added, held, marked, slow)
    entries, useful = match_episodes(episodes, events, grace_s, classes=known)
    n_false = useful.count(False)
    normal_hours = float(np.sum(np.asarray(labels) == NORMAL)) * seconds_per_window / 3600.0
    detected = [e for e in entries if e["detected"]]
    delays = [e["delay_s"] for e in detected]
    clears = [e["clear_s"] for e in detected if e["clear_s"] is not None]
    n = len(entries)
    summary = {
        "episodes": n,
        "detected": len(detected),
        "first_label_correct": sum(e["first_label_correct"] for e in entries),
        "first_label_accuracy": sum(e["first_label_correct"] for e in entries) / n if n else None,
        "raised_once": sum(len(e["raised"]) == 1 for e in entries),
        "median_delay_s": _median(delays),
        "max_delay_s": _max(delays),
        "median_clear_s": _median(clears),
        "max_clear_s": _max(clears),
        "not_cleared": sum(e["detected"] and e["clear_s"] is None for e in entries),
        "events_raised": len(events),
        "false_raises": n_false,
        "normal_hours": normal_hours,
        "false_raises_per_hour": false_alarms_per_hour(n_false, normal_hours),
    }
    return summary, entries, events
