"""Seeded synthetic SIP signalling traces with injected, labelled faults.

Each source ("sbc-1".."sbc-N") is a SIPp-like UAC offering calls to a far end. Every call is
simulated individually (vectorised with numpy), so counters come out of the call flow rather than
being set as ratios:

* every source is its own testbed: base load, call hold time, far-end response time, background
  failure and loss rates, retransmission limit and arrival process are drawn per source over wide
  ranges, so "normal" spans what real deployments show (a SIPp testbed holds calls 2 s and answers
  in 4 ms; a trunk may hold them minutes and answer in 50 ms) and a model cannot lean on any of
  these constants;
* arrivals: Poisson at the source's offered load, or paced like SIPp's ``-r`` (a fixed number per
  second, ``paced_fraction`` of the sources); the base load is drawn log-uniformly over a wide range
  (stratified across sources so a run always spans it), modulated by a slow diurnal-like sine, a
  mean-reverting random walk and, a few times an hour, an abrupt step to another level (normal
  traffic surges and drops too: a surge alone is no fault);
* INVITE delivery: each transmission (request and its response) may be lost; retransmissions follow
  RFC 3261 timer A (T1 = 500 ms, doubling; 5 (SIPp's default) or 6 (RFC timer B) retransmits per
  source) and an INVITE never answered fails when timer B fires at 32 s (``FailedMaxUDPRetrans``, or
  ``FailedTimeoutOnRecv`` where the caller gives up first, below);
* answered calls are rejected (``FailedCallRejected``) with a small background probability, or held
  for a lognormal time; then the caller's BYE crosses the same path (retransmitted with T1 doubling,
  capped at T2 = 4 s) and the call counts in ``SuccessfulCall`` when the BYE is answered, or fails
  when timer F fires at 32 s (``FailedMaxUDPRetrans``). ``CurrentCall`` counts every call started and
  not yet ended, including INVITEs still waiting for an answer and calls whose BYE is still being
  retransmitted;
* ``ResponseTime1`` is the mean INVITE -> final response time (ms) of calls answered in the second,
  0 when none was answered (as SIPp reports an empty period).

Faults change the conditions calls see while active: ``blocked`` (the far end answers nothing),
``capacity_limit`` (offered load surges while the path admits only about the normal load and
rejects the rest at once with a fast 503) and ``retrans_storm`` (20-40 % packet loss; opt-in, the
novel class). Variants real testbeds show, off by default and drawn per episode or per source when
enabled (:data:`VARIED`): a blocked path that loses only a share of its calls (``blocked_share``);
a capacity that drops at constant load (``capacity_modes``); calls beyond the capacity held with
``100 Trying`` until the caller gives up rather than refused (``hold_fraction``); a caller that gives
up on an unanswered INVITE after a few seconds instead of timer B (``ua_timeout_fraction``); a source
that starts cold, with no call in progress (``cold_start_fraction``); a fault a few seconds after
the previous one ends, inside its aftermath (``after_fault``). Record ``ts`` is the start of its
one-second interval; a fault active during seconds [s, e) is labelled ``[EPOCH + s, EPOCH + e)``,
so a label covers exactly the faulty samples.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.traceio import LabelInterval, Record

__all__ = ["EPOCH", "EXTRA_METRICS", "FAULT_KINDS", "SLOW_ANSWERS", "VARIED", "SimParams", "simulate", "source_testbeds"]

EPOCH = 1795384000.0  # fixed start so a seed fully determines the output
FAULT_KINDS: tuple[str, ...] = ("blocked", "capacity_limit", "retrans_storm")
# Opt-in like retrans_storm, never in FAULT_KINDS: a far end answering 100-400 ms late, calls completing.
# A second never-trained class, to choose recipes for novelty on without looking at a real one.
SLOW_ANSWERS = "slow_answers"
EXTRA_METRICS: tuple[str, ...] = ("FailedCallRejected", "CallRate")

# INVITE (re)transmission times after the first send: RFC 3261 timer A with T1 = 0.5 s.
_SENDS = np.array([0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
# BYE (non-INVITE) retransmissions: timer E, T1 doubling capped at T2 = 4 s.
_BYE_SENDS = np.array([0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5])
_TIMER_B = 32.0  # an unanswered INVITE transaction times out here
_TIMER_F = 32.0  # an unanswered BYE transaction times out here

Range = tuple[float, float]


@dataclass(frozen=True)
class SimParams:
    """Every knob of the simulator; ranges are (low, high), drawn uniformly unless noted."""

    load_range: Range = (0.5, 500.0)  # base offered calls/s, drawn log-uniformly per source
    diurnal_amplitude: float = 0.3  # relative amplitude of the slow sine on the load
    diurnal_period_s: float = 3600.0
    walk_sigma: float = 0.01  # random walk on log load, per sqrt(second)
    walk_reversion_s: float = 300.0  # mean reversion time, keeps the walk bounded
    load_steps_per_hour: float = 4.0  # abrupt load changes without a fault (a campaign starts, traffic fails over)
    load_step: Range = (0.5, 2.0)  # each sets the load to this multiple of its base, log-uniform
    paced_fraction: float = 0.3  # share of sources offering a fixed number of calls per second (SIPp -r)
    hold_s: Range = (1.5, 120.0)  # per-source mean call holding time after answer, log-uniform
    hold_sigma: Range = (0.0, 0.8)  # per-source lognormal sigma of the holding time (0: fixed, SIPp pause)
    response_ms: Range = (1.0, 50.0)  # per-source typical INVITE -> 200 time, log-uniform
    response_jitter: float = 0.4  # lognormal sigma per call
    reject_ratio: Range = (0.2, 0.8)  # 503 from the congested path, relative to the source's response time
    background_fail: Range = (0.0, 0.02)  # per-source share of calls rejected by the far end
    background_loss: Range = (0.0, 0.002)  # per-source packet loss in normal operation
    invite_retrans: tuple[int, ...] = (5, 6)  # per source: INVITE retransmissions before giving up
    faults: tuple[str, ...] = ("blocked", "capacity_limit")  # retrans_storm is opt-in
    fault_fraction: float = 0.3  # target share of time under a fault
    fault_duration_s: Range = (30.0, 120.0)
    min_gap_s: float = 60.0  # shortest normal stretch before each fault
    after_fault: float = 0.0  # share of faults that start soon after the one before ends ...
    after_fault_gap_s: Range = (2.0, 10.0)  # ... this many seconds after (its aftermath still in the window)
    surge: Range = (1.5, 4.0)  # capacity_limit: offered load multiplier
    capacity: Range = (0.7, 1.1)  # capacity_limit: admitted calls/s relative to the normal load
    storm_loss: Range = (0.2, 0.4)  # retrans_storm: packet loss
    slow_ms: Range = (100.0, 400.0)  # slow_answers: added to every answer's time
    warmup_s: int = 120  # simulated before the trace starts (at least 4 hold times) so CurrentCall is steady
    partial_block_fraction: float = 0.0  # blocked: share of episodes where only some calls go unanswered ...
    blocked_share: Range = (0.3, 0.9)  # ... this share of the calls started in the episode
    capacity_modes: tuple[str, ...] = ("surge",)  # surge: load jumps against the normal capacity; drop: capacity falls
    drop_capacity: Range = (0.0, 0.9)  # capacity_limit/drop: admitted calls/s relative to the offered load
    hold_fraction: float = 0.0  # capacity_limit: share of episodes (on sources with a UA timeout) holding, not refusing
    ua_timeout_fraction: float = 0.0  # share of sources whose caller gives up on an INVITE after ua_timeout_s
    ua_timeout_s: Range = (3.0, 8.0)
    cold_start_fraction: float = 0.0  # share of sources whose trace starts with no call in progress

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in (*FAULT_KINDS, SLOW_ANSWERS)]
        if unknown:
            raise NetsiamError(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULT_KINDS)}")
        for name in ("load_range", "load_step", "hold_s", "hold_sigma", "response_ms", "reject_ratio", "background_fail",
                     "background_loss", "fault_duration_s", "surge", "capacity", "storm_loss", "after_fault_gap_s"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise NetsiamError(f"SimParams.{name} must be 0 <= low <= high, got {(lo, hi)}")
        if not 0 <= self.after_fault <= 1:
            raise NetsiamError(f"SimParams.after_fault must be in [0, 1], got {self.after_fault}")
        if self.load_range[0] <= 0 or not 0 <= self.fault_fraction < 1 or self.hold_s[0] <= 0:
            raise NetsiamError("SimParams: load must be > 0, hold_s > 0, 0 <= fault_fraction < 1")
        if self.response_ms[0] <= 0 or not 0 <= self.paced_fraction <= 1:
            raise NetsiamError("SimParams: response_ms must be > 0, 0 <= paced_fraction <= 1")
        if not self.invite_retrans or not all(1 <= k < len(_SENDS) for k in self.invite_retrans):
            raise NetsiamError(f"SimParams.invite_retrans: each in 1..{len(_SENDS) - 1}")
        if self.background_loss[1] >= 1 or self.storm_loss[1] >= 1:
            raise NetsiamError("SimParams: packet loss must be < 1")
        if not set(self.capacity_modes) <= {"surge", "drop"} or not self.capacity_modes:
            raise NetsiamError("SimParams.capacity_modes: one or more of surge, drop")
        if not 0 < self.blocked_share[0] <= self.blocked_share[1] < 1 or self.ua_timeout_s[0] <= 0:
            raise NetsiamError("SimParams: blocked_share must be in (0, 1], ua_timeout_s > 0")


# What real testbeds show beyond the defaults (used to train the shipped model): partial blocking,
# capacity drops at constant load, rejection by timeout, callers with short timeouts, cold starts.
VARIED = SimParams(partial_block_fraction=0.4, capacity_modes=("surge", "drop"), hold_fraction=0.4,
                   ua_timeout_fraction=0.5, cold_start_fraction=0.3, fault_duration_s=(10.0, 180.0), min_gap_s=45.0)


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
        gap = p.min_gap_s + rng.exponential(max(mean_gap - p.min_gap_s, 1e-9))
        if episodes and p.after_fault > 0 and rng.random() < p.after_fault:
            gap = rng.uniform(*p.after_fault_gap_s)
        start = t + round(gap)
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


def _loguniform(rng: np.random.Generator, r: Range) -> float:
    lo, hi = r
    return float(lo * (hi / lo) ** rng.random()) if lo > 0 else float(rng.uniform(lo, hi))


def _retransmitted(rng: np.random.Generator, t0: np.ndarray, sends: np.ndarray, loss: np.ndarray,
                   lost_until: np.ndarray | None = None, silent: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transactions started at ``t0`` and retransmitted at ``t0 + sends[1:]`` while unanswered.

    A try gets its answer if the request and the response both survive the loss of the second it
    is sent in, and (``lost_until``, per transaction) is sent after the path stops losing that
    call. A ``silent`` transaction got a provisional answer: never retransmitted, never answered.
    -> (answered (n,) bool, index into ``sends`` of the answered (or last) try (n,), times of every
    retransmission sent (flat)).
    """
    last = len(loss) - 1
    until = np.full(t0.shape, -np.inf) if lost_until is None else lost_until

    def ok(times: np.ndarray, floor: np.ndarray) -> np.ndarray:
        got = rng.random(times.shape) < (1.0 - loss[np.minimum(times.astype(np.int64), last)]) ** 2
        return got & (times >= floor)

    answered = ok(t0, until)
    if silent is not None:
        answered |= silent                                  # no retransmission; the caller clears it later
    tries = np.zeros(t0.size, dtype=np.int64)
    retrans_t = np.empty(0)
    late = np.flatnonzero(~answered)
    if late.size and len(sends) > 1:  # only lost first tries need the retransmission matrix
        times = t0[late, None] + sends[None, 1:]
        got = ok(times, until[late, None])
        any_got = got.any(axis=1)
        tries[late] = np.where(any_got, got.argmax(axis=1) + 1, len(sends) - 1)
        answered[late] = any_got
        retrans_t = times[np.arange(1, len(sends))[None, :] <= tries[late, None]]
    return answered, tries, retrans_t


def _testbed(rng: np.random.Generator, p: SimParams) -> dict[str, Any]:
    """One source's constants (its testbed), drawn once, right after its fault schedule."""
    response = _loguniform(rng, p.response_ms)
    return {
        "hold_s": _loguniform(rng, p.hold_s),
        "hold_sigma": float(rng.uniform(*p.hold_sigma)),
        "response_ms": response,
        "reject_ms": response * float(rng.uniform(*p.reject_ratio)),
        "background_fail": float(rng.uniform(*p.background_fail)),
        "paced": bool(rng.random() < p.paced_fraction),
        "invite_retrans": int(p.invite_retrans[rng.integers(len(p.invite_retrans))]),
        # drawn only when enabled, so the default parameters keep their random streams (seeded traces)
        "ua_timeout_s": float(rng.uniform(*p.ua_timeout_s))
        if p.ua_timeout_fraction > 0 and rng.random() < p.ua_timeout_fraction else None,
        "cold": bool(p.cold_start_fraction > 0 and rng.random() < p.cold_start_fraction),
    }


def _source(rng: np.random.Generator, base_load: float, seconds: int, p: SimParams
            ) -> tuple[dict[str, np.ndarray], list[tuple[int, int, str]]]:
    """One source's per-second metric columns (length ``seconds``) and its fault episodes."""
    episodes = _schedule(rng, seconds, p)
    tb = _testbed(rng, p)
    hold_mean, hold_sigma, response, reject = tb["hold_s"], tb["hold_sigma"], tb["response_ms"], tb["reject_ms"]
    fail_p, paced = tb["background_fail"], tb["paced"]
    sends = _SENDS[: tb["invite_retrans"] + 1]
    give_up = tb["ua_timeout_s"] or _TIMER_B           # an INVITE without a final answer fails here
    sends = sends[sends < give_up]
    # Long holds need a longer warm-up before CurrentCall is in steady state; a cold source has none.
    w = 0 if tb["cold"] else max(p.warmup_s, int(4 * hold_mean) + 40)
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
    # Abrupt load steps (Poisson in time), each to a new multiple of the base load: normal traffic
    # changes level too, so a surge alone is no fault.
    n_steps = rng.poisson(p.load_steps_per_hour * seconds / 3600)
    if n_steps:
        at = np.sort(rng.integers(w, n, n_steps))
        level = np.ones(n)
        for t0, m in zip(at, [_loguniform(rng, p.load_step) for _ in range(n_steps)], strict=True):
            level[t0:] = m
        load *= level

    # Conditions per second. The loss array reaches past the horizon far enough for the last BYE
    # (answered up to 32 s late, held up to a few hold times, retransmitted for 32 s); lookups past
    # it clamp to its last second, whose events are past the horizon and never counted anyway.
    surge = np.ones(n)
    cap = np.full(n, np.inf)
    slow = np.zeros(n)                                  # slow_answers: ms added to an answer
    hold = np.zeros(n, dtype=bool)                      # capacity rejections held until the caller gives up
    share_lost = np.zeros(n)                            # blocked: share of the second's new calls never answered
    lost_until = np.zeros(n)                            # ... until this time (the episode's end)
    loss = np.full(n + 80, rng.uniform(*p.background_loss))
    for s, e, kind in episodes:
        sl = slice(w + s, w + e)
        if kind == "blocked":
            if p.partial_block_fraction > 0 and rng.random() < p.partial_block_fraction:
                share_lost[sl], lost_until[sl] = rng.uniform(*p.blocked_share), w + e
            else:
                loss[sl] = 1.0                          # the far end answers nothing, calls in progress included
        elif kind == "capacity_limit":
            if len(p.capacity_modes) > 1 and p.capacity_modes[rng.integers(len(p.capacity_modes))] == "drop" \
                    or p.capacity_modes == ("drop",):
                cap_rate = rng.uniform(*p.drop_capacity) * load[sl]
            else:
                surge[sl] = rng.uniform(*p.surge)
                cap_rate = rng.uniform(*p.capacity) * load[sl]
            cap[sl] = np.floor(cap_rate + rng.random(e - s))  # stochastic rounding
            hold[sl] = tb["ua_timeout_s"] is not None and p.hold_fraction > 0 and rng.random() < p.hold_fraction
        elif kind == SLOW_ANSWERS:
            slow[sl] = rng.uniform(*p.slow_ms)
        else:  # retrans_storm
            loss[sl] = rng.uniform(*p.storm_loss)

    # Calls: Poisson arrivals uniform within their second, or paced (the running total of the rate,
    # rounded, evenly spread over the second).
    rate = load * surge
    if paced:
        per_sec = np.diff(np.floor(np.cumsum(rate) + rng.random()), prepend=0.0).astype(np.int64)
    else:
        per_sec = rng.poisson(rate)
    sec = np.repeat(np.arange(n), per_sec)
    ncalls = sec.size
    rank = np.arange(ncalls) - np.repeat(np.cumsum(per_sec) - per_sec, per_sec)
    if paced:
        arr = sec + (rank + 0.5) / np.repeat(np.maximum(per_sec, 1), per_sec)
    else:
        arr = sec + rng.random(ncalls)
    cap_rejected = rank >= cap[sec]
    lost = rng.random(ncalls) < share_lost[sec] if share_lost.any() else np.zeros(ncalls, dtype=bool)

    # INVITE transactions. A held call got 100 Trying (no retransmission) and never a final answer.
    held_cap = cap_rejected & hold[sec]
    answered, tries, retrans_t = _retransmitted(rng, arr, sends, loss, np.where(lost, lost_until[sec], -np.inf),
                                                silent=held_cap)
    jitter = rng.lognormal(0.0, p.response_jitter, ncalls)
    rt_ms = sends[tries] * 1000 + np.where(cap_rejected, reject, response) * jitter + slow[sec]
    answer_t = arr + rt_ms / 1000
    answered &= ~held_cap
    rejected = answered & (cap_rejected | (rng.random(ncalls) < fail_p))
    held = answered & ~rejected
    timeout_t = arr[~answered] + give_up

    # Held calls end with a BYE across the same path: success when it is answered, else a failure
    # when timer F fires (a blocked path fails the calls in progress too, as SIPp reports).
    mu = math.log(hold_mean) - hold_sigma**2 / 2
    bye_t = answer_t[held] + rng.lognormal(mu, hold_sigma, int(held.sum()))
    bye_ok, bye_tries, bye_retrans_t = _retransmitted(rng, bye_t, _BYE_SENDS, loss)
    bye_rtt = response * 1e-3 * rng.lognormal(0.0, p.response_jitter, bye_t.size)
    success_t = bye_t[bye_ok] + _BYE_SENDS[bye_tries[bye_ok]] + bye_rtt[bye_ok]
    bye_fail_t = bye_t[~bye_ok] + _TIMER_F

    ok_calls = _bins(success_t, n)
    rej_calls = _bins(answer_t[rejected], n)
    # SIPp's counters: an INVITE given up by the caller's own timeout is FailedTimeoutOnRecv, one that
    # ran out of retransmissions (timer B) and a failed BYE (timer F) are FailedMaxUDPRetrans.
    invite_to, bye_to = _bins(timeout_t, n), _bins(bye_fail_t, n)
    by_caller = tb["ua_timeout_s"] is not None
    recv_to, retrans_to = (invite_to, bye_to) if by_caller else (np.zeros(n), invite_to + bye_to)
    to_calls = recv_to + retrans_to
    n_answers = _bins(answer_t[answered], n)
    rt_sum = _bins(answer_t[answered], n, rt_ms[answered])
    offered = per_sec.astype(np.float64)
    ended = ok_calls + rej_calls + to_calls
    cols = {
        "OutgoingCall": offered,
        "SuccessfulCall": ok_calls,
        "FailedCall": rej_calls + to_calls,
        "Retransmissions": _bins(retrans_t, n) + _bins(bye_retrans_t, n),
        "CurrentCall": np.cumsum(offered) - np.cumsum(ended),
        "ResponseTime1": np.round(np.divide(rt_sum, n_answers, out=np.zeros(n), where=n_answers > 0), 3),
        "FailedMaxUDPRetrans": retrans_to,
        "FailedTimeoutOnRecv": recv_to,
        "FailedCallRejected": rej_calls,
        "CallRate": offered,
    }
    return {k: v[w:] for k, v in cols.items()}, episodes


def _generators(sources: int, seed: int, params: SimParams) -> tuple[list[np.random.Generator], np.ndarray]:
    """One generator per source, and the sources' base loads."""
    root = np.random.SeedSequence(seed)
    master, *children = (np.random.default_rng(s) for s in root.spawn(sources + 1))
    # Stratified log-uniform base loads: each source gets its own slice of the range, so even a
    # few sources span it (the model must generalise across loads).
    lo, hi = params.load_range
    u = (master.permutation(sources) + master.random(sources)) / sources
    return children, lo * (hi / lo) ** u


def source_testbeds(sources: int, seed: int, params: SimParams = SimParams(), minutes: float = 0.0
             ) -> dict[str, dict[str, Any]]:
    """The per-source constants ``simulate(sources, minutes, seed, params)`` uses: base load, hold
    time, response time... (the schedule is drawn first, so ``minutes`` must match)."""
    children, base_loads = _generators(sources, seed, params)
    out = {}
    for k, (rng, base) in enumerate(zip(children, base_loads, strict=True)):
        _schedule(rng, round(minutes * 60), params)
        out[f"sbc-{k + 1}"] = {"base_load": float(base), **_testbed(rng, params)}
    return out


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
    children, base_loads = _generators(sources, seed, params)
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
