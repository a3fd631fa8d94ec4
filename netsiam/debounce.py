"""The raise/clear state machine, one per source, shared by the daemon and ``evaluate``.

Per-window classes go in; ``raised``/``cleared`` transitions come out.

- A named fault (any class but ``normal`` and ``unknown``) is raised when at least ``raise_k``
  of the last ``raise_n`` windows carry it.
- ``unknown`` is a weaker claim: windows that straddle a fault's edges are often far from every
  prototype, so ``unknown`` is raised only when a run of anomalous windows has lasted
  ``unknown_after`` windows and no named class has reached ``raise_k`` of ``raise_n``, or, where the
  counters themselves show it (``slow``: read ``unknown`` for its slow answers,
  :mod:`netsiam.slowanswers`), after ``slow_unknown_after`` such windows in a row, or one whose own last
  seconds in a row were that slow as many windows' worth, outside a named fault's aftermath.
- An active fault clears after ``clear_m`` consecutive normal windows. An active fault switches
  (clear the old, raise the new) only to a named class that carried the last ``switch_after``
  windows in a row; a named fault never turns into ``unknown``. A long ``switch_after`` keeps one
  raise per episode while the windows at a fault's edges disagree.
- ``started_at`` is the end time of the first anomalous window of the run, so replaying the same
  windows gives the same episode start, hence the same event ids.
- While a named fault is active, and after it clears until ``clear_m`` windows in a row are plainly
  normal and at least ``aftermath_s`` seconds (record time) have passed, an ``unknown`` window whose
  nearest class is ``normal`` counts as normal: the recovery after a fault (a burst of late answers,
  retransmissions draining, held calls timing out up to SIP's 32 s later) is beyond every threshold
  yet nearer normal than the fault, and must neither hold the fault up nor raise ``unknown`` after it.
  A window of a named class ends that grace at once; an ``unknown`` one nearest a fault counts as
  anomalous but ends it only once ``aftermath_s`` has passed (a freeze's recovery lands nearer a
  fault for a window or two; chosen on the validation recordings, ``docs/method.md``). Any raise ends it.
- ``hold_within`` (hysteresis, on by default): while a named fault is active, a ``normal`` window that is also within
  that fault's own threshold counts as the fault, so windows the two classes share do not clear it.
- ``release_in_range`` (on by default): a window whose every input's last samples are back inside its normal
  range (``in_range``, :func:`netsiam.evidence.tails_in_range`) holds no named fault: while one is active or
  in its aftermath such an ``unknown`` window counts as normal whatever its nearest class (so such windows
  clear it as normal ones would), and hysteresis does not hold a ``normal`` one. A 30-s window remembers a
  fault long after its counters are back (a window nearest the fault, beyond every threshold, for up to 9 s;
  chosen on the validation recordings, ``docs/method.md``). A named window is released only by
  ``release_named`` (below; one of a class added after training may first count as ``unknown``), an active
  ``unknown`` is not cleared by it, and
  with no fault active and no aftermath it changes nothing.
- ``release_named`` (on by default): a window of the active named fault, or of the fault whose aftermath it is,
  back in range and showing none of that fault's signature or mark, counts as normal too (it must not hold the
  fault or raise it again), once a window out of range was seen since the fault was raised (a fault whose inputs
  stay in range would otherwise clear and be raised again); elsewhere it counts as named, so no ``restart_span``
  covers it.
- A class added after training (``prototypes add``, feedback; the window is given with ``added`` and, as
  ``nearest``, the trained class nearest it) is placed from a few windows, and it can take a fault's recovery (a
  freeze's held calls answered late look like a far end answering slowly). While another fault is active, or in
  its aftermath up to ``added_grace_s`` after it cleared, such a window counts as ``unknown`` (then judged by the
  rules above, by that nearest trained class). Outside that it is a named fault like any other. Chosen on the
  validation recordings, ``docs/method.md``.
- ``hold_signature``: while a named fault is active, a ``normal`` window, or an ``unknown`` one nearest
  ``normal``, that shows the fault's signature (``held``: an input that rises above its normal range in most
  of the fault's training windows and hardly ever in its aftermath, :func:`netsiam.evidence.fault_signatures`:
  a limit's failures and rejections) counts as the fault. In the steady middle of a long fault the encoder's
  window drifts back towards normal; the counters say it goes on.
- ``name_on_signature``: while no fault is active, an ``unknown`` window whose nearest class is a fault whose
  signature it shows (``held``) counts as that fault: the counters confirm what the encoder's window is
  nearest to, at a fault's onset before the window is within its threshold. Never a switch: a fault's held
  calls failing late look like a limit's signature (chosen on the validation recordings, ``docs/method.md``).
- ``name_on_mark`` (on by default): a window that shows the mark of exactly one fault (``marked``: an input
  that no other fault and no aftermath shows, :func:`netsiam.evidence.fault_marks`: a limit's rejections) is
  that fault, whatever the encoder gave it (a class added after training aside), before any rule above and
  whether or not its inputs are back in range: the window's own counters name it, and it is read alone, so
  every tracker, wherever it started, treats it as a window of that class. It names a limit that begins while
  a freeze or its aftermath still fills the encoder's window, which neither a switch nor a raise from the
  aftermath's nearest-normal windows catches for up to 27 s. A mark on a count of calls shows only beyond
  chance (:func:`netsiam.evidence.marks_counted`): unchecked, the few rejected calls a second of normal traffic
  at a low call rate raised limits (``docs/method.md``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass

from netsiam.config import DebounceConfig
from netsiam.schemas.classes import NORMAL, UNKNOWN

__all__ = ["NORMAL", "UNKNOWN", "FaultTracker", "Transition"]

_NONE: frozenset[str] = frozenset()   # shared: most trackers never see a named class


@dataclass(frozen=True, slots=True)
class Transition:
    state: str          # "raised" | "cleared"
    fault: str
    started_at: float   # window end of the first anomalous window of the episode
    window_end: float   # window that caused this transition


class FaultTracker:
    """Debounce per-window classes of one source into raised/cleared transitions."""

    __slots__ = ("_active", "_added_until", "_after_fault", "_aftermath", "_aftermath_until", "_cfg", "_clean_streak",
                 "_given", "_given_run", "_n", "_named", "_normal_streak", "_plain_streak", "_recent", "_run_len",
                 "_out_seen", "_run_start", "_seen", "_settle_at", "_since_added", "_since_releasable", "_slow_run",
                 "_started_at", "_tail", "_tail_len", "_tail_start")

    def __init__(self, cfg: DebounceConfig) -> None:
        self._cfg = cfg
        self._recent: deque[tuple[str, float]] = deque(maxlen=cfg.raise_n)
        self._active: str | None = None
        self._started_at = 0.0
        self._normal_streak = 0
        self._run_start: float | None = None  # first anomalous window since clear_m normals in a row
        self._run_len = 0                     # anomalous windows in that run
        self._tail, self._tail_len, self._tail_start = NORMAL, 0, 0.0   # the latest run of one class
        self._aftermath = False               # a named fault cleared and the stream is not clean normal yet
        self._aftermath_until = 0.0           # ... nor aftermath_s past the clear
        self._after_fault: str | None = None  # the fault it is the aftermath of
        self._added_until = 0.0               # ... and the end of its grace for classes added after training
        self._clean_streak = 0
        # What ``quiet`` needs: the named classes a tracker started at any window may hold or be in the
        # aftermath of (one it could have raised), plain normal windows in a row since, and when every such
        # aftermath is over; to know what could be raised, the named windows (as given) among the last
        # raise_n (window number, class) and the latest run of one class as given (also ``restart_span``'s).
        self._seen = _NONE
        self._plain_streak = 0
        self._settle_at: float | None = None
        self._n = 0
        self._named: tuple[tuple[int, str], ...] = ()
        self._given, self._given_run = NORMAL, 0
        self._since_added = 1 << 30           # windows since the last one of a class added after training
        self._slow_run = 0                    # unknown windows in a row read so for their slow answers
        self._since_releasable = 1 << 30      # windows since the last named one back in range (release_named)
        self._out_seen = False                # a window out of range since the last raise (release_named)

    @property
    def active(self) -> str | None:
        return self._active

    @property
    def quiet(self) -> bool:
        """Nothing remembered, by this tracker or by one that started at any later window: a fresh tracker
        fed the windows from here on makes the same transitions (a replay may start here).

        Trackers started at different windows can disagree while a fault lasts (one holds ``unknown`` where
        another raised the named class it saw next; one holds a named fault through normal windows within
        its threshold where another has none to hold). So after a window of a named class that some tracker
        could have raised, quiet waits for what ends every such fault and its aftermath: ``clear_m`` normal
        windows in a row within no threshold of such a class and showing none of their signatures, or back
        in range (every tracker has cleared),
        then a run of ``clear_m`` normal windows ending ``aftermath_s`` or more after them (the same run, if
        long enough)."""
        return self._normal_streak >= self._cfg.clear_m and not self._aftermath and not self._seen

    @property
    def given_run(self) -> int:
        """Windows in a row, up to the last one, given as the same class (before any rule converts it but
        ``name_on_mark``, which reads the window alone)."""
        return self._given_run

    @property
    def restart_span(self) -> int:
        """How many of the last windows, all given as the active named fault, make every tracker agree:
        one started at any earlier window (or any of these) holds that fault after this one and makes
        this one's transitions from then on, its episode's ``started_at`` aside; 0 while that is not so.
        ``max(raise_n, switch_after)`` windows of a named class raise it in a tracker with no fault (or
        with ``unknown``, raised first where ``unknown_after`` < ``raise_k``) and switch any other to it;
        then the recent windows agree, no aftermath is pending, and every other count is reset before it
        is read again. Never for ``unknown``: a tracker that raised a named fault does not turn into it.
        tests/test_pipeline.py checks it on random sequences."""
        a, cfg = self._active, self._cfg
        if a is None or a == UNKNOWN or self._given != a:
            return 0
        need = max(cfg.raise_n, cfg.switch_after)
        # a window of a class added after training is read otherwise in some trackers' grace, not in others'; so
        # is a named one back in range (release_named: normal where its fault is active or just cleared)
        return need if self._given_run >= need and self._since_added >= need and self._since_releasable >= need else 0

    def release(self, window_end: float) -> list[Transition]:
        """Start over as a new tracker; a fault still active ends with its ``cleared`` at ``window_end``
        (the daemon stops judging the source: it went silent, or its state is dropped)."""
        out = [Transition("cleared", self._active, self._started_at, window_end)] if self._active else []
        self.__init__(self._cfg)  # type: ignore[misc]
        return out

    def _named_majority(self) -> str | None:
        """The named class holding raise_k of the last raise_n windows (ties: most recent)."""
        counts = Counter(c for c, _ in self._recent if c not in (NORMAL, UNKNOWN))
        if not counts:
            return None
        best = max(counts.values())
        if best < self._cfg.raise_k:
            return None
        return next(c for c, _ in reversed(self._recent) if counts.get(c) == best)

    def _raise(self, fault: str, window_end: float) -> Transition:
        self._active, self._out_seen = fault, False
        self._aftermath = False   # a raised fault is no aftermath: nearest-normal windows must not clear it
        self._started_at = self._run_start if self._run_start is not None else window_end
        return Transition("raised", fault, self._started_at, window_end)

    def _witness_named(self, cls: str) -> None:
        """A window of a named class, as given: can a tracker started anywhere raise it now? Such a tracker
        sees a suffix of the windows, and raises a class first only by raise_k of the last raise_n windows,
        or by switch_after of them in a row."""
        cfg, n = self._cfg, self._n
        self._named = (*(w for w in self._named if w[0] > n - cfg.raise_n), (n, cls))
        # given_run: this class's windows in a row (update counted this one first)
        if self._given_run >= cfg.switch_after or sum(c == cls for _, c in self._named) >= cfg.raise_k:
            self._seen, self._settle_at = self._seen | {cls}, None
        self._plain_streak = 0

    def _witness_other(self, cls: str, window_end: float, within: Collection[str] | None, released: bool,
                       held: Collection[str] | None) -> None:
        """A normal or unknown window once a named class was seen: forget it when no tracker can hold it or
        be in its aftermath any more."""
        cfg = self._cfg
        # plain: a normal window that holds no seen class in any tracker (past the first clear_m plain ones,
        # none is active anywhere; a released one holds none anywhere)
        plain = cls == NORMAL and (released or self._settle_at is not None
                                   or ((not cfg.hold_within or within is None or self._seen.isdisjoint(within))
                                       and (not cfg.hold_signature or not held or self._seen.isdisjoint(held))))
        self._plain_streak = self._plain_streak + 1 if plain else 0
        if self._plain_streak < cfg.clear_m:
            return
        if self._settle_at is None:      # every tracker has cleared by now; its aftermath ends by this
            self._settle_at = window_end + cfg.aftermath_s
        if window_end >= self._settle_at:
            self._seen, self._settle_at = _NONE, None

    def update(self, cls: str, window_end: float, nearest: str | None = None,
               within: Collection[str] | None = None, in_range: bool | None = None,
               added: bool = False, held: Collection[str] | None = None,
               marked: Collection[str] | None = None, slow: int = 0) -> list[Transition]:
        """One window's class (``nearest``: its nearest class ignoring thresholds, of the trained classes only
        where ``added``: the window's class was added after training; ``within``: the classes whose threshold
        it is within; ``in_range``: every input's last seconds inside its normal range; ``held``: the faults whose
        signature it shows; ``marked``: those whose mark it shows; ``slow``: read ``unknown`` for its slow answers,
        how many windows' worth of its last seconds were slow in a row, :mod:`netsiam.slowanswers`; each when
        known)."""
        if self._cfg.name_on_mark and marked and len(marked) == 1 and not added:
            cls = next(iter(marked))   # stateless: every tracker, wherever it started, reads the window so
        self._n += 1
        if cls == self._given:
            self._given_run += 1
        else:
            self._given, self._given_run = cls, 1
        released = bool(in_range) and self._cfg.release_in_range
        # an unknown window nearest a fault it shows the signature of: a tracker with no fault active reads it
        # as that fault (so every tracker witnesses it as one it could raise)
        signed = (self._cfg.name_on_signature and cls == UNKNOWN and held is not None and nearest is not None
                  and nearest in held)
        if cls != NORMAL and cls != UNKNOWN:
            self._witness_named(cls)
        elif signed:
            self._witness_named(str(nearest))
        elif self._seen:
            self._witness_other(cls, window_end, within, released, held)
        if signed and self._active is None and not released:   # a window back in range holds no fault
            cls = str(nearest)
        added = added and cls != NORMAL and cls != UNKNOWN
        self._since_added = 0 if added else self._since_added + 1
        if added and cls != self._active and self._cfg.added_grace_s > 0 and (
                self._active not in (None, UNKNOWN)
                or (self._aftermath and window_end < self._added_until and cls != self._after_fault)):
            cls = UNKNOWN   # in another fault's grace: judged as an unknown window nearest that trained class
        # a named window whose counters no longer show its fault: released where that fault is active or just
        # cleared (it must not raise it again); other trackers read it as named, so no restart span covers it
        releasable = (self._cfg.release_named and released and cls != NORMAL and cls != UNKNOWN and not added
                      and not (held and cls in held) and not (marked and cls in marked))
        self._since_releasable = 0 if releasable else self._since_releasable + 1
        # only a fault its counters showed (a fault whose inputs stay in range would clear and be raised again)
        if releasable and self._out_seen and (cls == self._active or (self._active is None and self._aftermath
                                                                      and cls == self._after_fault)):
            cls = NORMAL
        if (self._cfg.hold_within and within is not None and cls == NORMAL and not released
                and self._active not in (None, UNKNOWN) and self._active in within):
            cls = self._active
        if (self._cfg.hold_signature and held and not released
                and (cls == NORMAL or (cls == UNKNOWN and nearest == NORMAL))
                and self._active not in (None, UNKNOWN) and self._active in held):
            cls = self._active
        self._clean_streak = self._clean_streak + 1 if cls == NORMAL else 0
        if self._clean_streak >= self._cfg.clear_m and window_end >= self._aftermath_until:
            self._aftermath = False
        if (cls == UNKNOWN and (nearest == NORMAL or released)
                and (self._aftermath or self._active not in (None, UNKNOWN))):
            cls = NORMAL    # a named fault's aftermath: beyond every threshold, but nearer normal than the fault
        elif cls != NORMAL and (cls != UNKNOWN or window_end >= self._aftermath_until):
            self._aftermath = False
        # a fault's aftermath hides late answers as it hides any recovery (a window nearest the fault stays unknown)
        self._slow_run = self._slow_run + 1 if slow and cls == UNKNOWN and not self._aftermath else 0
        # or the window's own slow seconds in a row: the counters already show that run
        slow_now = max(self._slow_run, slow) if self._slow_run else 0
        self._recent.append((cls, window_end))
        if cls == self._tail:
            self._tail_len += 1
        else:
            self._tail, self._tail_len, self._tail_start = cls, 1, window_end
        if cls == NORMAL:
            self._normal_streak += 1
        else:
            self._normal_streak = 0
            if self._run_start is None:
                self._run_start = window_end
            self._run_len += 1
        out: list[Transition] = []
        if self._active is not None:
            if self._normal_streak >= self._cfg.clear_m:
                out.append(Transition("cleared", self._active, self._started_at, window_end))
                self._aftermath_until = window_end + self._cfg.aftermath_s
                self._after_fault, self._added_until = self._active, window_end + self._cfg.added_grace_s
                self._aftermath = self._active != UNKNOWN and (self._clean_streak < self._cfg.clear_m
                                                               or self._cfg.aftermath_s > 0)
                self._active = None
            elif cls not in (NORMAL, UNKNOWN, self._active) and self._tail_len >= self._cfg.switch_after:
                out.append(Transition("cleared", self._active, self._started_at, window_end))
                self._run_start = self._tail_start           # the new fault starts at its own first window
                out.append(self._raise(cls, window_end))
        else:
            # a normal or unknown window cannot make a majority: the last window left none (else a fault would
            # be active) or the history was cleared, and this one only pushes a window out (~3 % of the daemon)
            named = self._named_majority() if cls not in (NORMAL, UNKNOWN) else None
            if named is not None:
                out.append(self._raise(named, window_end))
            elif cls != NORMAL and (self._run_len >= self._cfg.unknown_after
                                    or 0 < self._cfg.slow_unknown_after <= slow_now):
                out.append(self._raise(UNKNOWN, window_end))
        if self._normal_streak >= self._cfg.clear_m:
            self._run_start, self._run_len = None, 0
            self._recent.clear()
        if self._active not in (None, UNKNOWN) and in_range is False:
            self._out_seen = True
        return out
