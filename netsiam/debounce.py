"""The raise/clear state machine, one per source, shared by the daemon and ``evaluate``.

A fault is raised when at least ``raise_k`` of the last ``raise_n`` windows are anomalous (any
class but ``normal``, ``unknown`` included); its name is the most frequent anomalous class among
those windows (ties: a named class over ``unknown``, then the most recent). It clears after ``clear_m`` consecutive normal windows. If
the windows settle on a different fault (``raise_k`` of the last ``raise_n``), the old one clears
and the new one is raised. ``started_at`` is the end time of the first anomalous window of the
run, so a replay of the same windows gives the same episode start and the same event ids.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from netsiam.config import DebounceConfig

__all__ = ["NORMAL", "UNKNOWN", "FaultTracker", "Transition"]

NORMAL = "normal"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Transition:
    state: str          # "raised" | "cleared"
    fault: str
    started_at: float   # window end of the first anomalous window of the episode
    window_end: float   # window that caused this transition


class FaultTracker:
    """Debounce per-window classes of one source into raised/cleared transitions."""

    __slots__ = ("_active", "_cfg", "_normal_streak", "_recent", "_started_at")

    def __init__(self, cfg: DebounceConfig) -> None:
        self._cfg = cfg
        self._recent: deque[tuple[str, float]] = deque(maxlen=cfg.raise_n)
        self._active: str | None = None
        self._started_at = 0.0
        self._normal_streak = 0

    @property
    def active(self) -> str | None:
        return self._active

    def _candidate(self) -> tuple[str, float] | None:
        """The fault that k of the last n windows agree is anomalous, with its run start."""
        anomalous = [(c, t) for c, t in self._recent if c != NORMAL]
        if len(anomalous) < self._cfg.raise_k:
            return None
        counts = Counter(c for c, _ in anomalous)
        best = max(counts.values())
        # most frequent class; ties go to a named class over unknown, then to the most recent
        tied = [c for c, _ in reversed(anomalous) if counts[c] == best]
        fault = next((c for c in tied if c != UNKNOWN), tied[0])
        return fault, anomalous[0][1]

    def update(self, cls: str, window_end: float) -> list[Transition]:
        self._recent.append((cls, window_end))
        out: list[Transition] = []
        if self._active is None:
            cand = self._candidate()
            if cand is not None:
                self._active, self._started_at = cand
                self._normal_streak = 0
                out.append(Transition("raised", self._active, self._started_at, window_end))
            return out
        if cls == NORMAL:
            self._normal_streak += 1
            if self._normal_streak >= self._cfg.clear_m:
                out.append(Transition("cleared", self._active, self._started_at, window_end))
                self._active = None
                self._recent.clear()
            return out
        self._normal_streak = 0
        cand = self._candidate()
        if cand is not None and cand[0] != self._active:
            faults = [c for c, _ in self._recent if c == cand[0]]
            if len(faults) >= self._cfg.raise_k:
                out.append(Transition("cleared", self._active, self._started_at, window_end))
                start = next(t for c, t in self._recent if c == cand[0])
                self._active, self._started_at = cand[0], start
                out.append(Transition("raised", self._active, self._started_at, window_end))
        return out
