"""Back-to-back faults spliced from one real recording: a fault that begins inside another's aftermath.

A testbed's faults often follow each other within seconds, while a recording (or the simulator) keeps
them apart. Here a recording's fault episode, its aftermath cut ``gap`` seconds after its end, is
followed directly by another of its episodes of a different class (then that one's own 40 s of
aftermath): the same testbed, rate and hold time, so every per-load feature stays true; only
``CurrentCall``, a gauge, is carried across the cut (the first part's calls in progress fade out
over ``fade_s``), so the cut itself is no step no testbed makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from netsiam.traceio import LabelInterval

__all__ = ["spliced"]

LEAD_S = 35.0    # normal traffic kept before the first fault
OVERLAY_S = 35   # seconds of the first fault's aftermath laid under the second (``overlay``)
_COUNTS = ("SuccessfulCall", "FailedCall", "Retransmissions")
TAIL_S = 40.0    # kept after the second fault ends (its own aftermath)


def spliced(records: Sequence[dict[str, Any]], labels: Sequence[LabelInterval], rng: np.random.Generator,
            gap_s: tuple[float, float] = (2.0, 10.0), fade_s: float = 10.0, interval_s: float = 1.0,
            exclude: Sequence[str] = (), overlay: bool = False) -> tuple[list[dict[str, Any]], list[LabelInterval]]:
    """Records of one recording (dicts ``source, ts, metrics``, ``ts`` in epoch seconds as trace files hold
    them after an import) -> one new source
    per ordered pair of episodes of different classes on a source, named ``SOURCE~ItoJ``. A pair whose
    kept stretches hold a third episode is skipped (its time would be labelled normal), as are
    episodes labelled as in ``exclude``. ``overlay``: the first fault's aftermath goes on under the second
    (what its held calls did after the cut in the recording, beyond its normal level before the fault, is
    added to the second part's counters for ``OVERLAY_S``), as when a fault begins while the calls an
    earlier one held are still failing."""
    out_r: list[dict[str, Any]] = []
    out_l: list[LabelInterval] = []
    by_src: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_src.setdefault(r["source"], []).append(r)
    for src, recs in by_src.items():
        recs.sort(key=lambda r: r["ts"])
        ts = np.array([r["ts"] for r in recs])
        eps = sorted((iv for iv in labels if iv.source == src), key=lambda iv: iv.start)

        for i, a in enumerate(eps):
            for j, b in enumerate(eps):
                if i == j or a.label == b.label or a.label in exclude or b.label in exclude:
                    continue
                gap = float(rng.uniform(*gap_s))
                kept_to = a.end + gap + (OVERLAY_S if overlay else 0.0)
                if not (_alone(eps, i, a.start - LEAD_S, kept_to) and _alone(eps, j, b.start, b.end + TAIL_S)):
                    continue
                first = [recs[k] for k in np.flatnonzero((ts >= a.start - LEAD_S) & (ts < a.end + gap))]
                second = [recs[k] for k in np.flatnonzero((ts >= b.start) & (ts < b.end + TAIL_S))]
                if len(first) < 2 or len(second) < 2:
                    continue
                name = f"{src}~{i}to{j}"
                shift = first[-1]["ts"] + interval_s - second[0]["ts"]
                before, after = first[-1]["metrics"].get("CurrentCall"), second[0]["metrics"].get("CurrentCall")
                carry = 0.0 if before is None or after is None else float(before) - float(after)
                out_r.extend({**r, "source": name} for r in first)
                extra = _aftermath(recs, ts, a, gap) if overlay else []
                for n, r in enumerate(second):
                    m = dict(r["metrics"])
                    if n < len(extra):
                        for k, v in extra[n].items():
                            if k in m:
                                m[k] = max(float(m[k]), v) if k == "ResponseTime1" else max(0.0, float(m[k]) + v)
                    if "CurrentCall" in m:
                        age = r["ts"] - second[0]["ts"]
                        m["CurrentCall"] = max(0.0, float(m["CurrentCall"]) + carry * math.exp(-age / fade_s))
                    out_r.append({"source": name, "ts": r["ts"] + shift, "metrics": m})
                out_l.append(LabelInterval(name, a.start, a.end, a.label))
                out_l.append(LabelInterval(name, b.start + shift, b.end + shift, b.label))
    return out_r, out_l


def _alone(eps: Sequence[LabelInterval], k: int, lo: float, hi: float) -> bool:
    """No episode but the ``k``-th overlaps [lo, hi)."""
    return not any(e.start < hi and e.end > lo for n, e in enumerate(eps) if n != k)


def _aftermath(recs: Sequence[dict[str, Any]], ts: np.ndarray, a: LabelInterval, gap: float) -> list[dict[str, float]]:
    """Per second after the cut: each counter beyond its median before the fault, and the response time."""
    lead = [recs[int(k)]["metrics"] for k in np.flatnonzero((ts >= a.start - LEAD_S) & (ts < a.start))]
    base = {c: float(np.median([m.get(c, 0.0) for m in lead])) if lead else 0.0 for c in _COUNTS}
    after = [recs[int(k)]["metrics"] for k in np.flatnonzero((ts >= a.end + gap) & (ts < a.end + gap + OVERLAY_S))]
    return [{**{c: float(m.get(c, 0.0)) - base[c] for c in _COUNTS}, "ResponseTime1": float(m.get("ResponseTime1", 0.0))}
            for m in after]
