"""Seeded synthetic SIP signalling traces with injected, labelled faults.

Each source ("sbc-1".."sbc-N") is a SIPp-like UAC offering calls to a far end. Every call is
simulated individually (vectorised with numpy), so counters come out of the call flow rather than
being set as ratios:

* arrivals: Poisson at the source's offered load; the base load is drawn log-uniformly over a wide
  range (stratified across sources so a run always spans it), modulated by a slow diurnal-like
  sine and a mean-reverting random walk;
* INVITE delivery: each transmission (request and its response) may be lost; retransmissions follow
  RFC 3261 timer A (T1 = 500 ms, doubling: 6 retransmits over 31.5 s) and an INVITE never answered
  fails when timer B fires at 32 s (``FailedTimeoutOnRecv``);
* answered calls are rejected (``FailedCallRejected``) with a small background probability, or held
  for a lognormal time and then counted in ``SuccessfulCall``; ``CurrentCall`` counts every call
  started and not yet ended, including INVITEs still waiting for an answer;
* ``ResponseTime1`` is the mean INVITE -> final response time (ms) of calls answered in the second,
  0 when none was answered (as SIPp reports an empty period).

Faults change the conditions calls see while active: ``blocked`` (the far end answers nothing),
``capacity_limit`` (offered load surges while the path admits only about the normal load and
rejects the rest at once with 503) and ``retrans_storm`` (20-40 % packet loss; opt-in, the novel
class). Record ``ts`` is the start of its one-second interval; a fault active during seconds
[s, e) is labelled ``[EPOCH + s, EPOCH + e)``, so a label covers exactly the faulty samples.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.traceio import LabelInterval, Record

__all__ = ["EPOCH", "EXTRA_METRICS", "FAULT_KINDS", "SimParams", "simulate"]

EPOCH = 1795384000.0  # fixed start so a seed fully determines the output
FAULT_KINDS: tuple[str, ...] = ("blocked", "capacity_limit", "retrans_storm")
EXTRA_METRICS: tuple[str, ...] = ("FailedTimeoutOnRecv", "FailedCallRejected", "CallRate")

# INVITE (re)transmission times after the first send: RFC 3261 timer A with T1 = 0.5 s.
_SENDS = np.array([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
_TIMER_B = 32.0  # an unanswered INVITE transaction times out here
_PAD = 40  # seconds past the horizon that loss lookups for late retransmissions may reach

Range = tuple[float, float]


@dataclass(frozen=True)
class SimParams:
    """Every knob of the simulator; ranges are (low, high), drawn uniformly unless noted."""

    load_range: Range = (2.0, 300.0)  # base offered calls/s, drawn log-uniformly per source
    diurnal_amplitude: float = 0.3  # relative amplitude of the slow sine on the load
    diurnal_period_s: float = 3600.0
    walk_sigma: float = 0.01  # random walk on log load, per sqrt(second)
    walk_reversion_s: float = 300.0  # mean reversion time, keeps the walk bounded
    hold_mean_s: float = 10.0  # call holding time after answer (lognormal)
    hold_sigma: float = 0.6
    response_ms: Range = (2.0, 8.0)  # per-source typical INVITE -> 200 time
    response_jitter: float = 0.4  # lognormal sigma per call
    reject_ms: float = 1.5  # 503 from the congested path comes back fast
    background_fail: Range = (0.005, 0.02)  # per-source share of calls rejected by the far end
    background_loss: Range = (0.0005, 0.002)  # per-source packet loss in normal operation
    faults: tuple[str, ...] = ("blocked", "capacity_limit")  # retrans_storm is opt-in
    fault_fraction: float = 0.3  # target share of time under a fault
    fault_duration_s: Range = (30.0, 120.0)
    min_gap_s: float = 60.0  # shortest normal stretch before each fault
    surge: Range = (1.5, 4.0)  # capacity_limit: offered load multiplier
    capacity: Range = (0.7, 1.1)  # capacity_limit: admitted calls/s relative to the normal load
    storm_loss: Range = (0.2, 0.4)  # retrans_storm: packet loss
    warmup_s: int = 120  # simulated before the trace starts so CurrentCall is in steady state

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise NetsiamError(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULT_KINDS)}")
        for name in ("load_range", "response_ms", "background_fail", "background_loss",
                     "fault_duration_s", "surge", "capacity", "storm_loss"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise NetsiamError(f"SimParams.{name} must be 0 <= low <= high, got {(lo, hi)}")
        if self.load_range[0] <= 0 or not 0 <= self.fault_fraction < 1 or self.hold_mean_s <= 0:
            raise NetsiamError("SimParams: load must be > 0, hold_mean_s > 0, 0 <= fault_fraction < 1")
        if self.background_loss[1] >= 1 or self.storm_loss[1] >= 1:
            raise NetsiamError("SimParams: packet loss must be < 1")


def _schedule(rng: np.random.Generator, seconds: int, p: SimParams) -> list[tuple[int, int, str]]:
    """Fault episodes (start s, end s, kind) separated by normal stretches."""
    if not p.faults or p.fault_fraction <= 0:
        return []
    lo, hi = p.fault_duration_s
    # Mean gap that makes faults take fault_fraction of the time on average.
    mean_gap = (lo + hi) / 2 * (1 - p.fault_fraction) / p.fault_fraction
    episodes: list[tuple[int, int, str]] = []
    t = 0
    while True:
        start = t + round(p.min_gap_s + rng.exponential(max(mean_gap - p.min_gap_s, 1e-9)))
        end = start + round(rng.uniform(lo, hi))
        if end > seconds:
            return episodes
        episodes.append((start, end, p.faults[rng.integers(len(p.faults))]))
        t = end


def _bins(times: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-second sums of events at ``times`` (seconds); events at or past ``n`` are dropped."""
    idx = times.astype(np.int64)
    keep = idx < n
    w = None if weights is None else weights[keep]
    return np.bincount(idx[keep], weights=w, minlength=n)[:n].astype(np.float64)


def _source(rng: np.random.Generator, base_load: float, seconds: int, p: SimParams
            ) -> tuple[dict[str, np.ndarray], list[tuple[int, int, str]]]:
    """One source's per-second metric columns (length ``seconds``) and its fault episodes."""
    episodes = _schedule(rng, seconds, p)
    w = p.warmup_s
    n = w + seconds  # extended timeline: index w is the first recorded second
    t = np.arange(n, dtype=np.float64)

    # Normal offered load: diurnal sine times exp(Ornstein-Uhlenbeck walk started in steady state).
    # (A plain loop: cheap at one step per second, and scipy.signal would add ~1.5 s of import.)
    a = 1.0 - 1.0 / p.walk_reversion_s
    x = rng.normal(0.0, p.walk_sigma / math.sqrt(1 - a * a))
    steps = []
    for eps in rng.normal(0.0, p.walk_sigma, n).tolist():
        x = a * x + eps
        steps.append(x)
    walk = np.array(steps)
    phase = rng.uniform(0, 2 * math.pi)
    load = base_load * (1 + p.diurnal_amplitude * np.sin(2 * math.pi * t / p.diurnal_period_s + phase))
    load *= np.exp(walk)

    # Conditions per second; the loss array reaches past the horizon for late retransmissions.
    surge = np.ones(n)
    cap = np.full(n, np.inf)
    loss = np.full(n + _PAD, rng.uniform(*p.background_loss))
    for s, e, kind in episodes:
        sl = slice(w + s, w + e)
        if kind == "blocked":
            loss[sl] = 1.0
        elif kind == "capacity_limit":
            surge[sl] = rng.uniform(*p.surge)
            cap_rate = rng.uniform(*p.capacity) * load[sl]
            cap[sl] = np.floor(cap_rate + rng.random(e - s))  # stochastic rounding
        else:  # retrans_storm
            loss[sl] = rng.uniform(*p.storm_loss)

    # Calls: Poisson arrivals, uniform within their second.
    per_sec = rng.poisson(load * surge)
    sec = np.repeat(np.arange(n), per_sec)
    ncalls = sec.size
    arr = sec + rng.random(ncalls)
    rank = np.arange(ncalls) - np.repeat(np.cumsum(per_sec) - per_sec, per_sec)
    cap_rejected = rank >= cap[sec]

    # Delivery: a try gets an answer if both the INVITE and its response survive the loss.
    def ok(times: np.ndarray) -> np.ndarray:
        return rng.random(times.shape) < (1.0 - loss[times.astype(np.int64)]) ** 2

    answered = ok(arr)
    tries = np.zeros(ncalls, dtype=np.int64)  # index into _SENDS of the answered (or last) send
    retrans_t = np.empty(0)
    late = np.flatnonzero(~answered)
    if late.size:  # only lost first tries need the retransmission matrix
        times = arr[late, None] + _SENDS[None, 1:]
        got = ok(times)
        any_got = got.any(axis=1)
        tries[late] = np.where(any_got, got.argmax(axis=1) + 1, len(_SENDS) - 1)
        answered[late] = any_got
        retrans_t = times[np.arange(1, len(_SENDS))[None, :] <= tries[late, None]]

    jitter = rng.lognormal(0.0, p.response_jitter, ncalls)
    rt_ms = _SENDS[tries] * 1000 + np.where(cap_rejected, p.reject_ms, rng.uniform(*p.response_ms)) * jitter
    answer_t = arr + rt_ms / 1000
    rejected = answered & (cap_rejected | (rng.random(ncalls) < rng.uniform(*p.background_fail)))
    success = answered & ~rejected
    mu = math.log(p.hold_mean_s) - p.hold_sigma**2 / 2
    success_t = answer_t[success] + rng.lognormal(mu, p.hold_sigma, int(success.sum()))
    timeout_t = arr[~answered] + _TIMER_B

    ok_calls = _bins(success_t, n)
    rej_calls = _bins(answer_t[rejected], n)
    to_calls = _bins(timeout_t, n)
    n_answers = _bins(answer_t[answered], n)
    rt_sum = _bins(answer_t[answered], n, rt_ms[answered])
    offered = per_sec.astype(np.float64)
    ended = ok_calls + rej_calls + to_calls
    cols = {
        "OutgoingCall": offered,
        "SuccessfulCall": ok_calls,
        "FailedCall": rej_calls + to_calls,
        "Retransmissions": _bins(retrans_t, n),
        "CurrentCall": np.cumsum(offered) - np.cumsum(ended),
        "ResponseTime1": np.round(np.divide(rt_sum, n_answers, out=np.zeros(n), where=n_answers > 0), 3),
        "FailedTimeoutOnRecv": to_calls,
        "FailedCallRejected": rej_calls,
        "CallRate": offered,
    }
    return {k: v[w:] for k, v in cols.items()}, episodes


def simulate(sources: int, minutes: float, seed: int, params: SimParams = SimParams(),
             progress: bool = False) -> tuple[list[Record], list[LabelInterval]]:
    """Per-second records for ``sources`` sources over ``minutes``, and their fault labels.

    Records are interleaved by time (as a live stream arrives), sources in order within a second.
    Source k's stream depends only on (seed, k) and its base load, so sbc-1 of a 5-source run
    differs from a 20-source run only through its stratified base load.
    """
    if sources < 1:
        raise NetsiamError(f"--sources must be >= 1, got {sources}")
    seconds = round(minutes * 60)
    if seconds < 1:
        raise NetsiamError(f"--minutes must cover at least one second, got {minutes}")
    root = np.random.SeedSequence(seed)
    master, *children = (np.random.default_rng(s) for s in root.spawn(sources + 1))
    # Stratified log-uniform base loads: each source gets its own slice of the range, so even a
    # few sources span it (the model must generalise across loads).
    lo, hi = params.load_range
    u = (master.permutation(sources) + master.random(sources)) / sources
    base_loads = lo * (hi / lo) ** u

    names = [f"sbc-{k + 1}" for k in range(sources)]
    int_cols = [m for m in (*RAW_METRICS, *EXTRA_METRICS) if m not in ("ResponseTime1", "CallRate")]
    per_source: list[list[dict[str, float]]] = []
    labels: list[LabelInterval] = []
    for name, rng, base in tqdm(list(zip(names, children, base_loads, strict=True)), desc="simulate",
                                unit="source", file=sys.stderr, disable=not progress):
        cols, episodes = _source(rng, float(base), seconds, params)
        lists = {k: v.astype(np.int64).tolist() if k in int_cols else v.tolist() for k, v in cols.items()}
        keys = list(lists)
        per_source.append([dict(zip(keys, row, strict=True)) for row in zip(*lists.values(), strict=True)])
        labels += [LabelInterval(name, EPOCH + s, EPOCH + e, kind) for s, e, kind in episodes]

    records = [Record(names[k], EPOCH + i, per_source[k][i]) for i in range(seconds) for k in range(sources)]
    return records, labels
