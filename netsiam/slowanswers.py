"""Answers slower than the source's own: a window the encoder reads ``normal`` is ``unknown`` when its far end
answers several times slower than that source usually does.

The encoder sees a 30-s window and nothing older, and testbeds differ: far ends answer in 1 ms on one and
in 50 ms on another, so a window cannot tell a far end that slowed down from one that is slow by nature.
A source's own history can. Each source keeps the level of its answer times (``log1p`` of SIPp's
``ResponseTime1``, ms), a running median. A window that the encoder reads ``normal`` and the median of whose
clean seconds among its last :data:`TAIL` lies more than ``log(slow_answer_factor)`` above the level is
``unknown`` (its nearest class stays ``normal``, so the debounce's aftermath rules apply to it as to any such
window: a freeze's backlog answered late raises nothing; nor, in a fault's aftermath, do windows slow and
``unknown`` that lie nearest the fault).

* The level is a running median: each second moves it by :data:`STEP` towards the sample, so one slow
  second moves it by no more than a fast one. Only clean seconds are judged and learnt from: answered, with no
  retransmission and failed calls under a tenth of those offered (a freeze answers nothing and must not drag
  the level to 0, and its backlog is answered on resends; one INVITE answered on its resend doubles the mean
  answer time of a second of 100 calls answered in 5 ms; a limit refuses calls fast).
* A second slower than the level by more than the factor teaches it a tenth as fast (a far end that stays
  slower becomes the source's normal in tens of minutes; an episode of a few minutes stays ``unknown``).
  The level reads the counters only, never the model: a new model version keeps it.
* A source starts from its first window whose last second is clean: the median answer time of the clean
  seconds among its last :data:`SEED`. It is judged once :data:`WARM` clean seconds taught it (those learnt ten
  times as fast).
  A restarted daemon replays each source from a window before its current episode (``detector/sources.py``)
  and starts its level there, from the source's traffic before the episode, near the level it lost but
  not always equal to it: a window whose answers lie near the bound may be judged otherwise after a restart.
* Windows ``unknown`` and answered that slowly (whether the encoder or the level read them so) are ``slow`` for
  the debounce: ``detector.debounce.slow_unknown_after`` of them in a row raise ``unknown`` without the wait
  for ``unknown_after`` (:mod:`netsiam.debounce`). A slow window carries how many of its last seconds in a row
  were each clean and that slow (in windows: divided by the stride, at least 1), and that many raise too:
  three such seconds raise at the third, not two windows later once the median of five has seen them. Not
  while the model holds a class added after training (:func:`netsiam.givens.slow_run_stride`): an
  operator's class may be about to name the slowdown. The event such a window raises quotes, first, its
  answer time against the range its source's level allows (:func:`slow_evidence`).
* A false alarm an operator marks ``normal`` (``netsiam feedback``) raises the model's factor above the
  episode's slowest window (:data:`HEADROOM`), in its manifest (:data:`MANIFEST_KEY`): the same slowdown
  later raises nothing. The factor in force is the larger of the config's and the model's.

Chosen on the validation recordings (``docs/method.md``). ``slow_answer_factor`` 0 turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from netsiam.config import DebounceConfig
from netsiam.evidence import DECIMALS, K
from netsiam.features import RAW_METRICS
from netsiam.schemas.classes import NORMAL, UNKNOWN

__all__ = ["CLEAN_SHARE", "HEADROOM", "MANIFEST_KEY", "SEED", "STEP", "TAIL", "WARM", "AnswerLevel", "answer_times",
           "factor_for", "flag_slow", "flag_trace", "slow_evidence", "slow_seconds", "source_levels",
           "taught_factor"]

TAIL = 5          # seconds at the window's end whose clean ones' median is compared with the level
STEP = 0.01       # the median's move per second, log units: 0.6 a minute at most
WARM = 10         # clean seconds before a source is judged
SEED = 10         # the seconds at the end of a source's first window that give its first level
MANIFEST_KEY = "slow_answers"   # {"normal_up_to": factor}: slowdowns an operator marked normal (feedback)
HEADROOM = 1.25   # a taught factor lies this far above the slowest window of the false alarm
CLEAN_SHARE = 0.1  # failed calls per call offered in a second judged and learnt from
FEATURE = "log_response_ms"  # what an event's evidence calls the answer time (netsiam.features: log1p ms)
_RT, _OFFERED, _FAILED, _RETRANS = (RAW_METRICS.index(m) for m in
                                    ("ResponseTime1", "OutgoingCall", "FailedCall", "Retransmissions"))


def _clean(raw: np.ndarray) -> np.ndarray:
    """Raw samples (..., R) -> which had answers, no retransmission and failed calls under :data:`CLEAN_SHARE` of
    those offered: seconds whose mean answer time is the far end's (an INVITE answered on its resend adds 0.5 s,
    which doubles the mean of a second of 100 calls answered in 5 ms; a refusing limit answers fast), the only
    ones judged and learnt from."""
    return ((raw[..., _RT] > 0) & (raw[..., _RETRANS] == 0)
            & (raw[..., _FAILED] < CLEAN_SHARE * np.maximum(raw[..., _OFFERED], 1.0)))


def answer_times(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows (N, T, R) -> per window the median ``log1p`` answer time (ms) of the clean seconds
    (:func:`_clean`) among its last :data:`TAIL`, and that of its last second if clean; NaN where none."""
    tail_raw = np.asarray(raw[:, -TAIL:], dtype=np.float64)
    lg = np.where(_clean(tail_raw), np.log1p(np.maximum(tail_raw[..., _RT], 0.0)), np.nan)
    tail = np.full(len(lg), np.nan)
    some = ~np.isnan(lg).all(axis=1)
    if some.any():
        tail[some] = np.nanmedian(lg[some], axis=1)
    return tail, lg[:, -1]


class AnswerLevel:
    """One source's answer-time level (``log1p`` ms) and how many clean seconds taught it."""

    __slots__ = ("level", "n")

    def __init__(self) -> None:
        self.level = 0.0
        self.n = 0

    def seed(self, raw: np.ndarray) -> None:
        """Start from the source's first window (T, R): the median answer time of the clean seconds
        (:func:`_clean`) among its last :data:`SEED`."""
        tail = raw[-SEED:]
        lg = np.log1p(tail[_clean(tail), _RT])
        if lg.size:
            self.level, self.n = float(np.median(lg)), int(lg.size)

    def judge(self, tail: float, last: float, margin: float) -> bool:
        """One window, in the source's order (:func:`answer_times`' two values): is it slow for this source?
        Then learn its last second."""
        slow = self.n >= WARM and not math.isnan(tail) and tail - self.level > margin
        if not math.isnan(last):
            step = STEP * 10 if self.n < WARM else STEP / 10 if last - self.level > margin else STEP
            self.level += step if last > self.level else -step
            self.n += 1
        return slow


def source_levels(sources: np.ndarray) -> list[AnswerLevel]:
    """Per window (N,), its source's level: one fresh :class:`AnswerLevel` per source (``evaluate``, feedback)."""
    by: dict[str, AnswerLevel] = {}
    out = []
    for s in np.asarray(sources).tolist():
        lv = by.get(s)
        if lv is None:
            lv = by[s] = AnswerLevel()
        out.append(lv)
    return out


def factor_for(cfg: DebounceConfig, manifest: Mapping[str, Any] | None) -> float:
    """The factor in force: the config's (0: off), raised to what feedback taught the model, if more."""
    if cfg.slow_answer_factor <= 0:
        return 0.0
    taught = (manifest or {}).get(MANIFEST_KEY) or {}
    return max(cfg.slow_answer_factor, float(taught.get("normal_up_to", 0.0)))


def slow_seconds(raw: np.ndarray, level: float, margin: float) -> int:
    """A window (T, R): how many of its last seconds in a row were clean (:func:`_clean`) and answered more than
    ``margin`` (log units) above ``level``."""
    lg = np.log1p(np.maximum(np.asarray(raw[:, _RT], dtype=np.float64), 0.0))
    ok = _clean(raw) & (lg - level > margin)
    return len(ok) if ok.all() else int(np.argmin(ok[::-1]))


def flag_slow(levels: Sequence[AnswerLevel], names: np.ndarray, raw: np.ndarray, factor: float,
              end_ts: np.ndarray | None = None, excess: np.ndarray | None = None,
              slow: np.ndarray | None = None, stride: int | None = 1) -> np.ndarray:
    """Classes (N,) of raw windows (N, T, R), each window's source level (N,) -> the same classes with the
    ``normal`` windows answered more than ``factor`` times slower than their level ``unknown`` (a copy;
    ``names`` itself when off: ``factor`` 0, :func:`factor_for`). Each source's windows are judged by end time
    (``end_ts``), or in the order given (the daemon's). ``excess`` (N,), if given, gets each judged window's
    answer time above its level (log units; NaN where not judged: read other than ``normal`` or warming up);
    ``slow`` (N,) int, if given, is set where a window is ``unknown`` now and answered that slowly, whether
    the encoder or this read it so (the debounce's ``slow``), to its :func:`slow_seconds` in windows of
    ``stride`` seconds, at least 1 (0 elsewhere; 1 where ``stride`` is None: not counted,
    :func:`netsiam.givens.slow_run_stride`)."""
    if slow is not None:
        slow[:] = 0
    if factor <= 0 or len(names) == 0:
        return names
    margin = math.log(factor)
    tail, last = answer_times(raw)
    order = range(len(names)) if end_ts is None else np.argsort(end_ts, kind="stable").tolist()
    out = np.array(names, dtype=object)
    for i in order:
        lv = levels[i]
        if lv.n == 0 and not math.isnan(last[i]):   # a source answering nothing (idle, frozen) tries no seed
            lv.seed(raw[i])
        if excess is not None:
            excess[i] = tail[i] - lv.level if out[i] == NORMAL and lv.n >= WARM else np.nan
        level = lv.level   # judge() learns the window's last second
        if lv.judge(float(tail[i]), float(last[i]), margin) and out[i] in (NORMAL, UNKNOWN):
            out[i] = UNKNOWN
            if slow is not None:
                slow[i] = 1 if stride is None else max(1, slow_seconds(raw[i], level, margin) // stride)
    return out.astype(str) if np.asarray(names).dtype.kind == "U" else out


def flag_trace(names: np.ndarray, sources: np.ndarray, raw: np.ndarray, end_ts: np.ndarray, cfg: DebounceConfig,
               manifest: Mapping[str, Any] | None, excess: np.ndarray | None = None,
               slow: np.ndarray | None = None, stride: int | None = 1) -> np.ndarray:
    """:func:`flag_slow` over whole traces (``evaluate``, feedback): each source from a fresh level, its windows
    by end time, under the factor in force for the model whose ``manifest`` is given (:func:`factor_for`)."""
    return flag_slow(source_levels(sources), names, raw, factor_for(cfg, manifest), end_ts, excess, slow, stride)


def taught_factor(excess: np.ndarray, factor: float) -> float | None:
    """A false alarm's windows' ``excess`` (:func:`flag_slow`) -> the factor that lets them all pass, if the
    one in force (``factor``) flagged any; else None."""
    worst = float(np.nanmax(excess)) if np.isfinite(excess).any() else -math.inf
    if factor <= 0 or worst <= math.log(factor):
        return None
    return math.ceil(math.exp(worst) * HEADROOM * 100) / 100


def slow_evidence(explain: Callable[[], list[dict[str, Any]]], level: AnswerLevel, raw: np.ndarray,
                  factor: float) -> Callable[[], list[dict[str, Any]]]:
    """The evidence of a window (T, R) flagged slow: first its answer time (the median of its last clean
    seconds) against the range its source's own level allows (``factor`` times either way), then ``explain``'s
    (the model's inputs against their normal ranges). The range is taken now: the level moves on."""
    tail = float(answer_times(raw[None])[0][0])
    margin = math.log(factor)
    item = {"feature": FEATURE, "value": round(tail, DECIMALS),
            "normal": [round(max(level.level - margin, 0.0), DECIMALS), round(level.level + margin, DECIMALS)]}
    return lambda: [item, *(e for e in explain() if e["feature"] != FEATURE)][:K]
