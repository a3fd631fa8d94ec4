"""Evidence: why a window was raised, in the operator's terms -- the model inputs furthest outside normal.

A fault event carries ``evidence``: up to :data:`K` derived features (:mod:`netsiam.features`), each
``{"feature": "success_rel", "value": 0.02, "normal": [0.97, 1.0]}``: its value in the window and the
range it keeps in normal traffic. The model itself decides the fault; evidence only describes the
window in the feature units a person can check against the traffic.

* The **value** of a feature is the mean of the window's last :data:`TAIL` samples: a fault is raised
  about 2 s into it, so the window's tail carries it (its head is still normal), and a mean over 3
  samples keeps a one-second glitch from dominating.
* Its **normal range** is the 1st..99th percentile of that same statistic over the training windows of
  clean normal traffic (:func:`normal_ranges`), rounded outward to :data:`DECIMALS` decimals; values
  are rounded to the same precision and compared with it, so what an event shows is what was decided.
* Features are ranked by how far outside their range they are, in units of the statistic's standard
  deviation over those windows (its **scale**): one unit for every feature, whatever its own units
  (concurrency_delta spans tens, retrans_log tenths). The interquartile range would be zero for
  retransmissions, which are 0 in almost every normal window.

The ranges are written into the artifact manifest under :data:`MANIFEST_KEY`; an artifact without them
(trained before evidence existed) gives empty evidence.

A fault's **signature** (:func:`fault_signatures`, manifest key :data:`SIGNATURE_KEY`): the inputs that rise
above their normal range in most of its training windows and hardly ever in the normal windows of its
aftermath (a capacity limit's failures and rejections stop with it; a freeze's retransmissions do not).
While the fault is active, a window that shows its signature (:func:`signatures_shown`) still carries
it, whatever the encoder makes of the window (the debounce's ``hold_signature``); while no fault is
active, an ``unknown`` window nearest the fault that shows it is that fault (``name_on_signature``).

A fault's **mark** (:func:`fault_marks`, manifest key :data:`MARK_KEY`): the signature inputs that also rise
above their range in hardly any window of another fault or of any aftermath (a limit's rejections: a freeze's
held calls fail too, but by timing out, never answered with an error). With the debounce's ``name_on_mark``
(on by default) a window showing one fault's mark is that fault whatever the encoder makes of it. A mark on a
count of calls shows only where the calls behind it are more than chance could give (:data:`MARK_SHARE`): one
rejected call in a second at 5 calls/s reads above the range but is no limit. A source whose window head
answered every call it offered is held to less (:func:`chance_permille`): at 60 calls/s, a tenth refused for 2 s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from netsiam.features import RAW_METRICS, call_counts, derive

__all__ = ["DECIMALS", "K", "MANIFEST_KEY", "MARK_ALPHA", "MARK_FLOOR", "MARK_HEAD_ALPHA", "MARK_HEAD_K", "MARK_KEY",
           "MARK_SECONDS", "MARK_SHARE", "QUANTILES", "SIGNATURE_AFTER", "SIGNATURE_DURING", "SIGNATURE_KEY",
           "SIGNATURE_TAIL", "TAIL", "DebounceInputs", "NormalRange", "binomial_tail", "chance_permille",
           "debounce_inputs", "evidence", "evidence_text", "fault_marks",
           "fault_signatures", "fewest_beyond_chance", "marks_counted", "normal_ranges", "ranges_from_manifest",
           "ranges_to_json", "signatures_from_manifest", "signatures_shown", "tails_in_range", "window_evidence"]

MANIFEST_KEY = "normal_ranges"
TAIL = 3                      # samples at the window's end that make a feature's value (changing it needs new ranges)
QUANTILES = (0.01, 0.99)      # the normal range: 98 % of clean normal windows fall inside it
DECIMALS = 2                  # the precision values and ranges are reported (and compared) at
K = 3                         # at most this many features per event: the few that explain it
SIGNATURE_KEY = "fault_signatures"
MARK_KEY = "fault_marks"
# An input is a fault's signature when it lies above its normal range in at least this share of the fault's
# training windows and in at most SIGNATURE_AFTER of its aftermath's (on the shipped model's data a freeze's
# retransmissions stay out in 0.39 of its aftermath, a limit's failures and rejections in 0.06-0.09). Only a
# rise: an input below its range (a freeze's missing answers) is a shortfall that outlasts the fault while
# held calls drain; on the validation recordings holding on it fixed nothing and held 17 freezes 1-2 s past
# their clear (docs/method.md). Read on the window's last SIGNATURE_TAIL samples: the counters as they are
# now (3, the evidence's mean, held 46 of 207 validation episodes 1-2 s past their clear, 1 held 17)
SIGNATURE_DURING = 0.5
SIGNATURE_AFTER = 0.15
SIGNATURE_TAIL = 1
# A mark on a count of calls (a limit's rejections) shows only where those calls, over the window's last 1, 2 or
# MARK_SECONDS seconds, are more than a MARK_SHARE share of the calls offered would give with probability
# MARK_ALPHA (one-sided binomial): at a few calls/s a rejected call or two per second is chance (simulated normal
# traffic refuses ~1 % of calls and, with the mark unchecked, raised limits). Marked within 1-3 s: refusing half
# the calls from 5 calls/s, a quarter from 10, 15 % from 40, 10 % from 150; below that the encoder alone names it.
# Chosen on the validation recordings and two simulations (no two marked seconds in a row in their normal
# traffic; the limits still marked within 5 s), docs/method.md.
MARK_SHARE = 0.05
MARK_ALPHA = 1e-4
MARK_SECONDS = 3
# A source whose window head (all but its last MARK_SECONDS samples) answered every call it offered (an answer time
# in every second that offered calls, no failed call, no retransmission) is held to less: MARK_HEAD_K times the
# largest share n_head calls with none refused leave likely (1 - MARK_HEAD_ALPHA ** (1 / n_head)), never under
# MARK_FLOOR nor over MARK_SHARE: 2 % from ~38 calls/s up, 5 % below ~15 (a head refusing one call, failing or
# resending any, says nothing: MARK_SHARE). A freeze's head answers nothing; its backlog is answered at once
# afterwards, with the far end's usual rejections against one second of new calls. Chosen on validation only,
# docs/method.md.
MARK_FLOOR = 0.02
MARK_HEAD_K = 3.0
MARK_HEAD_ALPHA = 1e-3
_OFFERED, _FAILED, _RETRANS, _RT = (RAW_METRICS.index(m) for m in ("OutgoingCall", "FailedCall", "Retransmissions",
                                                                     "ResponseTime1"))
assert MARK_SHARE * 1000 < 1024   # marks_counted packs (calls, share per mille) into one key
_SCALE_FLOOR = 10.0 ** -DECIMALS  # a feature constant in normal traffic: deviations below the precision mean nothing


class NormalRange(NamedTuple):
    lo: float
    hi: float
    scale: float   # std of the statistic over normal windows (>= the reported precision)


def _tail(x: np.ndarray, n: int = TAIL) -> np.ndarray:
    """(..., T, F) -> (..., F): each feature's value (mean of the last ``n`` samples)."""
    t = np.asarray(np.asarray(x)[..., -n:, :], np.float64)
    return np.add.reduce(t, axis=-2) / t.shape[-2]   # what .mean() computes, without its wrapper (a raise pays it)


def _values(x: np.ndarray, n: int = TAIL) -> np.ndarray:
    """(..., T, F) -> (..., F): each feature's value at the reported precision, as events show it and the
    debounce's release compares it (one rounding for both; + 0.0: no -0.0 in an event)."""
    return np.round(_tail(x, n), DECIMALS) + 0.0


def _round(v: float) -> float:
    return round(float(v), DECIMALS) + 0.0   # + 0.0: no -0.0 in an event


def normal_ranges(x_normal: np.ndarray, features: Sequence[str]) -> dict[str, NormalRange]:
    """Derived windows of normal traffic (N, T, F) -> each feature's normal range and scale; {} for N = 0."""
    x_normal = np.asarray(x_normal)
    if x_normal.ndim != 3 or x_normal.shape[-1] != len(features):
        raise ValueError(f"normal windows must be (N, T, {len(features)}), got {x_normal.shape}")
    if not len(x_normal):
        return {}
    s = _tail(x_normal)                                                     # (N, F)
    lo, hi = np.quantile(s, QUANTILES, axis=0)                              # (F,) each
    p = 10.0 ** DECIMALS
    # outward to the reported precision (the inner round first: 0.29 * 100 is 28.999...)
    lo, hi = np.floor(np.round(lo * p, 6)) / p, np.ceil(np.round(hi * p, 6)) / p
    sd = np.maximum(s.std(axis=0), _SCALE_FLOOR)
    return {f: NormalRange(_round(lo[j]), _round(hi[j]), round(float(sd[j]), 4)) for j, f in enumerate(features)}


def ranges_to_json(ranges: Mapping[str, NormalRange]) -> dict[str, Any]:
    """For the manifest: ``{feature: {"normal": [lo, hi], "scale": s}}``."""
    return {f: {"normal": [r.lo, r.hi], "scale": r.scale} for f, r in ranges.items()}


def ranges_from_manifest(manifest: Mapping[str, Any] | None) -> dict[str, NormalRange]:
    """The manifest's ranges; {} when it has none. A malformed entry is skipped, not raised: this runs
    in the daemon at a raise, and a bad range must cost that feature's evidence, not the event."""
    raw = (manifest or {}).get(MANIFEST_KEY)
    out: dict[str, NormalRange] = {}
    if not isinstance(raw, Mapping):
        return out
    for f, entry in raw.items():
        try:
            (lo, hi), scale = entry["normal"], entry["scale"]
            r = NormalRange(float(lo), float(hi), max(float(scale), _SCALE_FLOOR))
        except (KeyError, TypeError, ValueError):
            continue
        if all(math.isfinite(v) for v in r) and r.lo <= r.hi:
            out[str(f)] = r
    return out


def evidence(window: np.ndarray, features: Sequence[str], ranges: Mapping[str, NormalRange],
             k: int = K) -> list[dict[str, Any]]:
    """One derived window (T, F) -> up to ``k`` features outside their normal range, furthest first.

    When none is outside, the one closest to leaving its range (so a raised event always says
    something when ranges exist); [] without ranges.
    """
    vals = _values(window).tolist()                                         # (F,) as floats
    scored = []
    for j, f in enumerate(features):
        r = ranges.get(f)
        if r is None:
            continue
        v = vals[j]
        # > 0: scales outside the range; <= 0: scales inside it, to the nearer edge
        d = (r.lo - v if v < r.lo else v - r.hi if v > r.hi else -min(v - r.lo, r.hi - v)) / r.scale
        scored.append((-d, j, f, v, r))
    scored.sort()                                                           # furthest first; feature order on ties
    picked = [t for t in scored if t[0] < 0][:k] or scored[:1]
    return [{"feature": f, "value": v, "normal": [r.lo, r.hi]} for _, _, f, v, r in picked]


def tails_in_range(x: np.ndarray, features: Sequence[str], ranges: Mapping[str, NormalRange]) -> np.ndarray | None:
    """(N, T, F) model inputs -> (N,) whether every feature's value (as :func:`evidence` reads it) is inside
    its normal range: the window's last seconds look like normal traffic in every input. None when a
    feature has no range (an artifact without ranges: nothing to say)."""
    if not features or any(f not in ranges for f in features):
        return None
    lo = np.array([ranges[f].lo for f in features])
    hi = np.array([ranges[f].hi for f in features])
    v = _values(x)                                                          # (N, F), compared as reported
    return np.all((v >= lo) & (v <= hi), axis=-1)


def _rising(x: np.ndarray, labels: np.ndarray, after: np.ndarray, features: Sequence[str],
            ranges: Mapping[str, NormalRange], normal: str, exclusive: bool) -> dict[str, dict[str, str]]:
    """Per fault, the inputs above their range in SIGNATURE_DURING of its windows and in at most SIGNATURE_AFTER
    of its aftermath's (``exclusive``: and of every other fault's windows and aftermath)."""
    v = _values(x, SIGNATURE_TAIL)                                          # (N, F)
    faults = sorted({str(c) for c in labels} - {normal})
    out: dict[str, dict[str, str]] = {}
    for c in faults:
        during, aft = labels == c, after == c
        if not during.any() or not aft.any():
            continue
        others = [m for o in faults if o != c for m in (labels == o, after == o) if m.any()] if exclusive else []
        if exclusive and not others:       # no other fault to tell it from: a never-seen one may show it too
            continue
        elsewhere = [aft, *others]                                          # where it must stay (mostly) in range
        sig = {}
        for j, f in enumerate(features):
            r = ranges.get(f)
            if r is None:
                continue
            above = v[:, j] > r.hi
            if above[during].mean() >= SIGNATURE_DURING and all(above[m].mean() <= SIGNATURE_AFTER for m in elsewhere):
                sig[f] = "above"
        if sig:
            out[c] = sig
    return out


def fault_signatures(x: np.ndarray, labels: np.ndarray, after: np.ndarray, features: Sequence[str],
                     ranges: Mapping[str, NormalRange], normal: str = "normal") -> dict[str, dict[str, str]]:
    """Derived training windows (N, T, F), their labels and the fault whose aftermath each normal one lies in
    ("" for none) -> per fault, its signature ``{feature: "above"}``. A fault with no aftermath windows gets
    none: nothing says which of its inputs end with it."""
    return _rising(x, labels, after, features, ranges, normal, exclusive=False)


def fault_marks(x: np.ndarray, labels: np.ndarray, after: np.ndarray, features: Sequence[str],
                ranges: Mapping[str, NormalRange], normal: str = "normal") -> dict[str, dict[str, str]]:
    """As :func:`fault_signatures`, keeping only the inputs that also stay in range in every other fault's
    windows and aftermath (at most SIGNATURE_AFTER of them above): what no other known fault shows. On the
    shipped model's data a limit's rejections (above in 0.67 of its windows, 0.001 of a freeze's, 0.02 of a
    freeze's aftermath); its failures are no mark (a freeze's held calls time out: 0.69 of its windows). A model
    that knows one fault only has no marks: with nothing to tell it from, its failures would name every fault
    that fails calls, never-seen ones included, after it."""
    return _rising(x, labels, after, features, ranges, normal, exclusive=True)


def signatures_from_manifest(manifest: Mapping[str, Any] | None, key: str = SIGNATURE_KEY) -> dict[str, dict[str, str]]:
    """The manifest's fault signatures (``key``: :data:`MARK_KEY` for its marks); {} when it has none.
    Malformed entries (a side other than "above") are skipped, as malformed ranges are."""
    raw = (manifest or {}).get(key)
    out: dict[str, dict[str, str]] = {}
    if not isinstance(raw, Mapping):
        return out
    for c, sig in raw.items():
        if isinstance(sig, Mapping):
            ok = {str(f): side for f, side in sig.items() if side == "above"}
            if ok:
                out[str(c)] = ok
    return out


def marks_counted(raw: np.ndarray, feature: str) -> np.ndarray | None:
    """Raw windows (N, T, R) -> (N,) whether the calls ``feature`` counts, over the window's last 1..MARK_SECONDS
    samples, are beyond chance at the share the window's head allows (:func:`chance_permille`); None for a feature
    that counts no calls."""
    counts = call_counts(raw, feature)                                      # (N, T) or None
    if counts is None:
        return None
    permille = chance_permille(raw)                                         # (N,)
    out = np.zeros(len(raw), dtype=bool)
    for k in range(1, MARK_SECONDS + 1):
        c = np.rint(counts[:, -k:].sum(axis=1))                             # (N,)
        n = np.maximum(np.rint(raw[:, -k:, _OFFERED].sum(axis=1)), c)       # a counter behind by a second: never < c
        keys, at = np.unique(n.astype(np.int64) * 1024 + permille, return_inverse=True)   # a few (calls, share)
        need = [fewest_beyond_chance(int(key) >> 10, (int(key) & 1023) / 1000) for key in keys]
        out |= c >= np.array(need)[at.reshape(-1)]
    return out


def chance_permille(raw: np.ndarray) -> np.ndarray:
    """Raw windows (N, T, R) -> (N,) the share of calls (per mille, int) a mark's chance test assumes refused:
    MARK_SHARE, or less where the head answered every call (answers in every second that offered calls, none
    failed or resent): MARK_HEAD_K times the bound its calls with no refusal leave, at least MARK_FLOOR; rounded up
    (a few cached counts). A metric the model does not need reads 0: no answer time, no smaller share."""
    head = np.asarray(raw[:, :-MARK_SECONDS], dtype=np.float64)             # (N, T - MARK_SECONDS, R)
    offered = head[..., _OFFERED]
    n_head = offered.sum(axis=1)
    answered = ~np.any((offered > 0) & ~(head[..., _RT] > 0), axis=1)      # a stalled far end answers nothing
    clean = ((n_head > 0) & answered & (head[..., _FAILED].sum(axis=1) == 0)
             & (head[..., _RETRANS].sum(axis=1) == 0))
    bound = MARK_HEAD_K * -np.expm1(math.log(MARK_HEAD_ALPHA) / np.maximum(n_head, 1.0))
    share = np.where(clean, np.clip(bound, MARK_FLOOR, MARK_SHARE), MARK_SHARE)
    return np.ceil(np.round(share * 1000, 6)).astype(np.int64)


@functools.lru_cache(maxsize=1 << 16)
def fewest_beyond_chance(n: int, p: float = MARK_SHARE) -> int:
    """The fewest of ``n`` offered calls that a share ``p`` gives with probability under MARK_ALPHA (n + 1 where
    none can): worked out once per call count and share and cached, so a window costs a lookup."""
    c = math.floor(n * p) + 1            # at or below the mean is never beyond chance
    if c > n:
        return n + 1
    tail, pmf = binomial_tail(c, n, p), _pmf(c, n, p)
    while tail >= MARK_ALPHA and c <= n:  # P(X >= c + 1) = P(X >= c) - P(X = c): a few sigma of steps
        tail -= pmf
        pmf *= (n - c) / (c + 1) * p / (1 - p)
        c += 1
    return c if tail < MARK_ALPHA else n + 1


def binomial_tail(c: int, n: int, p: float) -> float:
    """P(X >= c) for X ~ Binomial(n, p), 0 < p < 1 (scipy's ``binom.sf(c - 1, n, p)``, which costs 0.7 s to
    import on a hot path that rarely needs it; equal within 1e-9, tests/test_evidence.py)."""
    if c <= 0:
        return 1.0
    if c > n:
        return 0.0
    below = c <= n * p                   # sum the tail that lies away from the mean: its terms fall geometrically
    total, i, step = 0.0, (c - 1 if below else c), (-1 if below else 1)
    while 0 <= i <= n:
        t = _pmf(i, n, p)
        total += t
        if t <= total * 1e-17:           # nothing left to add (a first term that underflows: none at all)
            break
        i += step
    return min(max(1.0 - total if below else total, 0.0), 1.0)


def _pmf(i: int, n: int, p: float) -> float:
    return math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
                    + (n - i) * math.log1p(-p))


def signatures_shown(x: np.ndarray, features: Sequence[str], ranges: Mapping[str, NormalRange],
                     signatures: Mapping[str, Mapping[str, str]],
                     raw: np.ndarray | None = None) -> list[frozenset[str]] | None:
    """(N, T, F) model inputs -> per window, the faults whose signature shows in its last seconds (some
    signature input above its normal range in the window's last SIGNATURE_TAIL samples, rounded as
    :func:`evidence` rounds values); with ``raw`` (the same windows' raw samples, for marks), an input that
    counts calls shows only where :func:`marks_counted` finds them beyond chance;
    None when there is nothing to show (no signatures, or one names an input without a range)."""
    idx = {f: j for j, f in enumerate(features)}
    sigs = [(c, sig) for c, sig in signatures.items() if sig]
    if not sigs or any(f not in idx or f not in ranges for _, sig in sigs for f in sig):
        return None
    v = _values(x, SIGNATURE_TAIL)                                          # (N, F)
    shown = np.zeros((len(v), len(sigs)), dtype=bool)                       # (N, C)
    for b, (_, sig) in enumerate(sigs):
        for f in sig:
            above = v[:, idx[f]] > ranges[f].hi
            if raw is not None:                                             # marks only; signatures read as is
                rows = np.flatnonzero(above)                                # rare: the test runs on those only
                counted = marks_counted(raw[rows], f) if len(rows) else None
                if counted is not None:
                    above[rows] = counted
            shown[:, b] |= above
    names = [c for c, _ in sigs]
    cache: dict[bytes, frozenset[str]] = {}   # one set per combination: most windows share the empty one
    out = []
    for row in shown:
        key = row.tobytes()
        got = cache.get(key)
        if got is None:
            got = cache[key] = frozenset(c for c, on in zip(names, row.tolist(), strict=True) if on)
        out.append(got)
    return out


class DebounceInputs(NamedTuple):
    in_range: np.ndarray | None                  # (N,) every input's tail back in its normal range
    held: list[frozenset[str]] | None            # (N,) the faults whose signature each window shows
    marked: list[frozenset[str]] | None          # (N,) the faults whose mark each window shows


def debounce_inputs(x: np.ndarray, raw: np.ndarray, features: Sequence[str], manifest: Mapping[str, Any] | None,
                    ranges: Mapping[str, NormalRange] | None = None,
                    classes: Collection[str] | None = None) -> DebounceInputs:
    """(N, T, F) model inputs and the (N, T, R) raw windows they derive from -> what the debounce reads of the
    counters under the artifact's manifest: per window, every input back in its normal range
    (:func:`tails_in_range`), the faults whose signature it shows and those whose mark it shows
    (:func:`signatures_shown`, a mark on a count of calls only beyond chance); each None when the manifest has
    nothing to judge it by. ``ranges``: the manifest's, where the caller has read them already; ``classes``: the
    model's classes now (a mark names its fault outright, so none of a class removed since training). The
    daemon, ``netsiam evaluate`` and feedback all feed the debounce from here."""
    if ranges is None:
        ranges = ranges_from_manifest(manifest)
    marks = signatures_from_manifest(manifest, MARK_KEY)
    if classes is not None:
        marks = {c: m for c, m in marks.items() if c in classes}
    return DebounceInputs(tails_in_range(x, features, ranges),
                          signatures_shown(x, features, ranges, signatures_from_manifest(manifest)),
                          signatures_shown(x, features, ranges, marks, raw))


def window_evidence(raw: np.ndarray, features: Sequence[str], manifest: Mapping[str, Any] | None,
                    k: int = K) -> list[dict[str, Any]]:
    """A raw window (T, R) as the daemon holds it -> its evidence under the artifact's manifest."""
    ranges = ranges_from_manifest(manifest)
    if not ranges:
        return []
    return evidence(derive(np.asarray(raw)[None], features)[0], features, ranges, k)


def evidence_text(ev: Sequence[Mapping[str, Any]]) -> str:
    """One line for a label or a chat message: ``success_rel 0.02 (normal 0.97 to 1.00); ...``."""
    fmt = f".{DECIMALS}f"
    return "; ".join(f"{e['feature']} {e['value']:{fmt}} (normal {e['normal'][0]:{fmt}} to {e['normal'][1]:{fmt}})"
                     for e in ev)
