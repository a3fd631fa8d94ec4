"""Raw metric vocabulary and the derived, load-invariant features the encoder sees.

Raw metrics use SIPp's statistic names (per-period ``(P)`` values, suffix dropped), so SIPp
imports, pcap imports and the simulator all speak one vocabulary:

==========================  ==========================================================
``OutgoingCall``            calls offered in the interval (new INVITEs)
``SuccessfulCall``          calls completed successfully in the interval
``FailedCall``              calls that failed in the interval (any cause)
``Retransmissions``         SIP message retransmissions in the interval
``CurrentCall``             calls in progress at the end of the interval (gauge)
``ResponseTime1``           mean INVITE->final response time in the interval, milliseconds
``FailedMaxUDPRetrans``     calls that failed in the interval because a request went unanswered
                            (retransmitted until SIP timer B/F gave up)
``FailedTimeoutOnRecv``     calls that failed in the interval because the caller gave up waiting
                            for an answer (its own timeout)
==========================  ==========================================================

Testbeds run at very different offered loads, so a model trained at one load must work at
another. Every derived feature is therefore a ratio to the window's own mean offered load (or a
log of a time), never a raw count: the same fault at 5 or 500 calls/s gives the same shape.

They also differ in constants no window can know: how long calls are held (2 s on a SIPp testbed,
minutes on a trunk) and how fast the far end answers. ``concurrency_rel`` (calls in progress per
call/s offered) is, by Little's law, about the mean holding time in normal traffic, so a model fed
it learns one testbed's hold time as "normal"; the default ``concurrency_delta`` is the change of
calls in progress since the window's first sample per call/s offered: ~0 in steady traffic whatever
the hold time, climbing by ~1 per second while an unanswered path piles up pending calls.
Failures and retransmissions enter on a log scale (``failed_log``, ``retrans_log``: ``log1p`` of the
per-load ratio over 0.05): a 10 % capacity limit (0.1) must not vanish next to a frozen far end's
five retransmissions per call; chosen over the linear ratios on the corpus's validation recordings,
where a 10 % limit at 120 calls/s was raised after 16-64 s by some training seeds, 3-4 s with logs.
``refused_log`` is ``failed_log`` of the failures that did not time out (answered with an error):
after a freeze the calls it held time out for up to 32 s in traffic that is normal again, while a
capacity limit refuses calls; with failures as one count the two read alike.
``log_response_ms`` still carries the far end's own level (1-50 ms is normal somewhere); the model
is trained over that whole range, so it is the shape (and 0 = nothing answered, or hundreds of ms
= retransmitted INVITEs) that tells a fault.
Derivation works on whole windows, ``(N, T, R) -> (N, T, F)``, and is shared by trainer and
daemon, so an offline window and an online window are the same: bit for bit in numpy; the daemon's
XLA path (:mod:`netsiam.compiled`) runs the same operations, in the same order, inside its encoder
call, checked against numpy for every batch shape (equal on the checks' windows, and never more than
a float32 rounding apart, or numpy derives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_FEATURES",
    "FEATURES",
    "RAW_METRICS",
    "TIMEOUT_METRICS",
    "call_counts",
    "derive",
    "feature_columns",
    "refused_calls",
    "required_metrics",
]

RAW_METRICS: tuple[str, ...] = (
    "OutgoingCall",
    "SuccessfulCall",
    "FailedCall",
    "Retransmissions",
    "CurrentCall",
    "ResponseTime1",
    "FailedMaxUDPRetrans",
    "FailedTimeoutOnRecv",
)
_IDX = {name: i for i, name in enumerate(RAW_METRICS)}

# Offered load below this many calls per interval is treated as this many, so ratios stay finite
# and a near-idle window does not explode into huge values. Low enough that a source offering
# 0.3 calls/s still gets true ratios (a floor of 1 halved every ratio at 0.5 calls/s).
MIN_LOAD = 0.1

# (raw (N, T, R), load (N, 1), xp) -> (N, T). ``xp`` holds the functions beyond arithmetic and
# slicing that derivation uses, ``mean``, ``log1p`` and ``maximum``: numpy here, TensorFlow's in the
# compiled serving path (netsiam.compiled derives inside the XLA call, same operations in the same order).
Deriver = Callable[[Any, Any, Any], Any]


def _col(raw: Any, name: str) -> Any:
    return raw[..., _IDX[name]]


def _per_load(name: str) -> Deriver:
    def f(raw: Any, load: Any, xp: Any) -> Any:
        return _col(raw, name) / load

    return f


def _offered_rel(raw: Any, load: Any, xp: Any) -> Any:
    return _col(raw, "OutgoingCall") / load


def _concurrency_delta(raw: Any, load: Any, xp: Any) -> Any:
    cur = _col(raw, "CurrentCall")
    return (cur - cur[:, :1]) / load


# Failures and retransmissions span from a few percent of the load (a 10 % capacity limit) to several
# times it (a frozen far end retransmitting); on a log scale the small ones are not lost next to the big.
RARE_SCALE = 0.05


def _log_per_load(name: str) -> Deriver:
    def f(raw: Any, load: Any, xp: Any) -> Any:
        return xp.log1p(_col(raw, name) / load / RARE_SCALE)

    return f


# A failure is a refusal (a final error answer: 486, 480, 500, 503 ...) or a timeout (nothing answered).
# The calls a freeze held time out up to 32 s after it ends, in traffic labelled normal; a capacity limit
# starting then refuses calls: only the split tells the two apart.
TIMEOUT_METRICS: tuple[str, ...] = ("FailedMaxUDPRetrans", "FailedTimeoutOnRecv")


def refused_calls(raw: Any, xp: Any = np) -> Any:
    """Failed calls that did not time out, from raw samples (..., R) in RAW_METRICS order; never below 0
    (counters that disagree)."""
    timeouts = sum(_col(raw, m) for m in TIMEOUT_METRICS)
    return xp.maximum(_col(raw, "FailedCall") - timeouts, 0.0)


def _refused_log(raw: Any, load: Any, xp: Any) -> Any:
    return xp.log1p(refused_calls(raw, xp) / load / RARE_SCALE)


def _log_response_ms(raw: Any, load: Any, xp: Any) -> Any:
    return xp.log1p(xp.maximum(_col(raw, "ResponseTime1"), 0.0))


# name -> (raw metrics it needs, Deriver)
FEATURES: dict[str, tuple[tuple[str, ...], Deriver]] = {
    "offered_rel": (("OutgoingCall",), _offered_rel),
    "success_rel": (("OutgoingCall", "SuccessfulCall"), _per_load("SuccessfulCall")),
    "failed_rel": (("OutgoingCall", "FailedCall"), _per_load("FailedCall")),
    "retrans_rel": (("OutgoingCall", "Retransmissions"), _per_load("Retransmissions")),
    "failed_log": (("OutgoingCall", "FailedCall"), _log_per_load("FailedCall")),
    "retrans_log": (("OutgoingCall", "Retransmissions"), _log_per_load("Retransmissions")),
    "concurrency_rel": (("OutgoingCall", "CurrentCall"), _per_load("CurrentCall")),
    "concurrency_delta": (("OutgoingCall", "CurrentCall"), _concurrency_delta),
    "log_response_ms": (("ResponseTime1",), _log_response_ms),
    "refused_log": (("OutgoingCall", "FailedCall", *TIMEOUT_METRICS), _refused_log),
}
DEFAULT_FEATURES: tuple[str, ...] = ("offered_rel", "success_rel", "failed_log", "retrans_log", "concurrency_delta",
                                      "log_response_ms", "refused_log")


# Features that are a count of calls over the offered load, and those calls per sample: what tells a few
# calls at 5 calls/s (chance) from a share of many (a fault) where the ratio alone reads alike.
_CALL_COUNTS: dict[str, Callable[[Any], Any]] = {
    "failed_rel": lambda raw: _col(raw, "FailedCall"),
    "failed_log": lambda raw: _col(raw, "FailedCall"),
    "refused_log": refused_calls,
}


def call_counts(raw: np.ndarray, feature: str) -> np.ndarray | None:
    """Raw samples (..., R) -> the calls ``feature`` counts in each (...); None for a feature that counts no calls."""
    f = _CALL_COUNTS.get(feature)
    return None if f is None else np.asarray(f(raw))


def required_metrics(features: Sequence[str] = DEFAULT_FEATURES) -> tuple[str, ...]:
    """Raw metrics a record must carry for these features (always in RAW_METRICS order)."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; known: {sorted(FEATURES)}")
    needed = {m for f in features for m in FEATURES[f][0]}
    return tuple(m for m in RAW_METRICS if m in needed)


def derive(raw: np.ndarray, features: Sequence[str] = DEFAULT_FEATURES) -> np.ndarray:
    """Raw windows in RAW_METRICS column order -> derived features.

    (N, T, R) -> (N, T, F), float32. ``raw`` must hold all of RAW_METRICS (missing ones may be 0
    when no selected feature needs them).
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 3 or raw.shape[-1] != len(RAW_METRICS):
        raise ValueError(f"raw windows must be (N, T, {len(RAW_METRICS)}), got {raw.shape}")
    out = np.empty(raw.shape[:2] + (len(features),), dtype=np.float32)
    for j, col in enumerate(feature_columns(raw, features)):
        out[..., j] = col
    return out


def feature_columns(raw: Any, features: Sequence[str], xp: Any = np) -> list[Any]:
    """Each feature's (N, T) values, float64, from raw windows (N, T, R): :func:`derive` without the
    checks and the float32 output, for any array library whose namespace ``xp`` has ``mean(a, axis,
    keepdims)``, ``log1p`` and ``maximum``."""
    load = xp.maximum(xp.mean(_col(raw, "OutgoingCall"), axis=1, keepdims=True), MIN_LOAD)  # (N, 1)
    return [FEATURES[name][1](raw, load, xp) for name in features]
