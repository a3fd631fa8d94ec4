"""The synthetic trace generator: determinism, record validity, fault signatures, load invariance."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pytest

from netsiam.errors import NetsiamError
from netsiam.features import FEATURES, RAW_METRICS, derive
from netsiam.traceio import LabelInterval, Record, write_trace
from netsiam.trainer.simulate import EPOCH, EXTRA_METRICS, FAULT_KINDS, SimParams, simulate, source_testbeds

ALL = SimParams(faults=FAULT_KINDS)
MINUTES = 40
WIN = 30  # window length for the derived-feature checks
ALL_FEATURES = tuple(FEATURES)
F = {name: j for j, name in enumerate(ALL_FEATURES)}
# One fixed testbed (hold, response, failures): what is left to differ between sources is the load.
FIXED = SimParams(faults=FAULT_KINDS, hold_s=(10.0, 10.0), hold_sigma=(0.5, 0.5), response_ms=(5.0, 5.0),
                  background_fail=(0.01, 0.01), paced_fraction=0.0, load_range=(2.0, 300.0), load_steps_per_hour=0.0)


@pytest.fixture(scope="module")
def run_all() -> tuple[list[Record], list[LabelInterval]]:
    return simulate(6, MINUTES, seed=11, params=ALL)


@pytest.fixture(scope="module")
def run_default() -> tuple[list[Record], list[LabelInterval]]:
    return simulate(4, 20, seed=5)


def by_source(records: list[Record]) -> dict[str, dict[str, np.ndarray]]:
    """source -> metric -> per-second column (records of one source are in time order)."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in records:
        cols = out.setdefault(r.source, {})
        for k, v in r.metrics.items():
            cols.setdefault(k, []).append(v)
    return {s: {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()} for s, cols in out.items()}


def label_array(labels: list[LabelInterval], source: str, n: int) -> np.ndarray:
    lab = np.full(n, "normal", dtype=object)
    for iv in labels:
        if iv.source == source:
            lab[int(iv.start - EPOCH) : int(iv.end - EPOCH)] = iv.label
    return lab


def episodes(labels: list[LabelInterval], kind: str) -> list[tuple[str, int, int]]:
    return [(iv.source, int(iv.start - EPOCH), int(iv.end - EPOCH)) for iv in labels if iv.label == kind]


def clean_normal(lab: np.ndarray, settle: int = 60) -> np.ndarray:
    """Normal seconds at least ``settle`` s after any fault (late answers and retransmissions of
    calls pending during a fault trail on for up to 32 s after it ends)."""
    fault = (lab != "normal").astype(float)
    return np.convolve(fault, np.ones(settle + 1), mode="full")[: len(lab)] == 0


def class_windows(cols: dict[str, np.ndarray], lab: np.ndarray, settle: int = 60
                  ) -> dict[str, list[np.ndarray]]:
    """Mean derived features of 30 s windows lying wholly in one class. Normal windows must also
    be ``settle`` s clear of a fault, so the aftermath of one (late answers) is not counted."""
    raw = np.stack([cols[m] for m in RAW_METRICS], axis=1)
    clean = clean_normal(lab, settle)
    out: dict[str, list[np.ndarray]] = {}
    for end in range(WIN, len(lab) + 1, 5):
        classes = set(lab[end - WIN : end])
        if len(classes) != 1:
            continue
        c = classes.pop()
        if c == "normal" and not clean[end - WIN : end].all():
            continue
        out.setdefault(c, []).append(derive(raw[None, end - WIN : end], ALL_FEATURES)[0].mean(axis=0))
    return out


def test_deterministic_per_seed() -> None:
    a = simulate(3, 5, seed=42, params=ALL)
    b = simulate(3, 5, seed=42, params=ALL)
    c = simulate(3, 5, seed=43, params=ALL)
    assert a == b
    assert a[0] != c[0]
    assert orjson.dumps([r.to_json() for r in a[0]]) == orjson.dumps([r.to_json() for r in b[0]])


def test_records_complete_finite_non_negative(run_all, tmp_path) -> None:
    records, _ = run_all
    assert len(records) == 6 * MINUTES * 60
    for r in records:
        assert set(RAW_METRICS) | set(EXTRA_METRICS) == set(r.metrics)
        for k, v in r.metrics.items():
            assert math.isfinite(v) and v >= 0, (r, k)
            if k not in ("ResponseTime1", "CallRate"):
                assert isinstance(v, int), (r, k)
        m = r.metrics
        assert m["FailedCall"] == m["FailedMaxUDPRetrans"] + m["FailedTimeoutOnRecv"] + m["FailedCallRejected"]
    assert write_trace(tmp_path / "t.jsonl", records[:100]) == 100


def test_timestamps_per_source(run_all) -> None:
    records, _ = run_all
    names = [f"sbc-{k}" for k in range(1, 7)]
    assert [r.source for r in records[:6]] == names  # interleaved by time, sources in order
    for name in names:
        ts = np.array([r.ts for r in records if r.source == name])
        assert ts[0] == EPOCH and len(ts) == MINUTES * 60
        assert np.all(np.diff(ts) == 1.0)


def test_labels_cover_existing_sources_and_times(run_all) -> None:
    records, labels = run_all
    sources = {r.source for r in records}
    end = EPOCH + MINUTES * 60
    assert labels
    for iv in labels:
        assert iv.source in sources and iv.label in FAULT_KINDS
        assert EPOCH <= iv.start < iv.end <= end
        assert 30 <= iv.end - iv.start <= 120
    for s in sources:  # episodes of one source never overlap
        ivs = sorted((iv.start, iv.end) for iv in labels if iv.source == s)
        assert all(a[1] < b[0] for a, b in zip(ivs, ivs[1:], strict=False))
    share = sum(iv.end - iv.start for iv in labels) / (len(sources) * MINUTES * 60)
    assert 0.2 <= share <= 0.4


def test_retrans_storm_is_opt_in(run_default, run_all) -> None:
    assert "retrans_storm" not in SimParams().faults
    assert {iv.label for iv in run_default[1]} == {"blocked", "capacity_limit"}
    assert {iv.label for iv in run_all[1]} == set(FAULT_KINDS)
    only = simulate(2, 15, seed=1, params=SimParams(faults=("retrans_storm",)))[1]
    assert only and {iv.label for iv in only} == {"retrans_storm"}


def test_base_loads_span_a_wide_range(run_all) -> None:
    records, labels = run_all
    means = []
    for s, cols in by_source(records).items():
        normal = label_array(labels, s, len(cols["OutgoingCall"])) == "normal"
        means.append(cols["OutgoingCall"][normal].mean())
    assert max(means) / min(means) > 10


def test_blocked_signature(run_all) -> None:
    records, labels = run_all
    data = by_source(records)
    eps = episodes(labels, "blocked")
    assert eps
    for s, a, b in eps:
        c = data[s]
        normal_load = c["OutgoingCall"][max(0, a - 60) : a].mean()
        normal_retrans = c["Retransmissions"][clean_normal(label_array(labels, s, len(c["OutgoingCall"])))].mean()
        # Calls in progress (holding ~10 s, lognormal) finish within ~30 s; then hardly anything succeeds.
        if b - a > 35:
            assert c["SuccessfulCall"][a + 30 : b].mean() < 0.05 * normal_load + 0.3
        retrans = c["Retransmissions"][a:b].mean()
        assert retrans > 2 * normal_load and retrans > 20 * normal_retrans + 1
        assert np.all(c["ResponseTime1"][a + 1 : b] == 0)  # nothing answered
        # nothing ends for the first 32 s (no answer, no BYE answered, no timer fired yet) while
        # calls keep arriving: pending calls pile up
        if normal_load > 5:
            end = min(b, a + 30)
            assert c["CurrentCall"][end - 1] - c["CurrentCall"][a - 1] > 0.8 * c["OutgoingCall"][a:end].sum()
        if b - a > 40:  # INVITEs sent early in the block time out 32 s later (timer B, or the caller's own timeout)
            timeouts = c["FailedMaxUDPRetrans"] + c["FailedTimeoutOnRecv"]
            assert timeouts[a + 32 : b + 1].sum() > 0.5 * c["OutgoingCall"][a : b - 32].sum()


def test_capacity_limit_signature(run_all) -> None:
    records, labels = run_all
    data = by_source(records)
    eps = episodes(labels, "capacity_limit")
    assert eps
    surges = []
    for s, a, b in eps:
        c = data[s]
        # Surge is x1.5-4, blurred by the diurnal drift and the random walk of the base load.
        surges.append(c["OutgoingCall"][a:b].mean() / c["OutgoingCall"][max(0, a - 60) : a].mean())
        assert surges[-1] > 1.15
        failed = c["FailedCall"][a:b].sum()
        assert failed > 0.2 * c["OutgoingCall"][a:b].sum()
        assert c["FailedCallRejected"][a:b].sum() == failed  # 503 at once, no timeouts
        assert c["Retransmissions"][a:b].sum() <= 0.02 * c["OutgoingCall"][a:b].sum() + 3
    assert np.mean(surges) > 1.8


def test_retrans_storm_signature(run_all) -> None:
    records, labels = run_all
    data = by_source(records)
    eps = episodes(labels, "retrans_storm")
    assert eps
    for s, a, b in eps:
        c = data[s]
        offered = c["OutgoingCall"][a:b].sum()
        assert c["Retransmissions"][a:b].sum() > 0.3 * offered
        assert c["FailedCall"][a:b].sum() < 0.1 * offered + 2  # most calls still succeed
        answered = c["ResponseTime1"][a:b] > 0
        assert c["ResponseTime1"][a:b][answered].mean() > 100.0  # answers after 500 ms / 1.5 s


def _class_means(records, labels) -> dict[str, np.ndarray]:
    acc: dict[str, list[np.ndarray]] = {}
    for s, cols in by_source(records).items():
        for c, ws in class_windows(cols, label_array(labels, s, len(cols["OutgoingCall"]))).items():
            acc.setdefault(c, []).extend(ws)
    return {c: np.mean(ws, axis=0) for c, ws in acc.items()}


def test_derived_features_separate_the_classes(run_all) -> None:
    m = _class_means(*run_all)
    assert set(m) == {"normal", *FAULT_KINDS}
    n, bl, cap, st = m["normal"], m["blocked"], m["capacity_limit"], m["retrans_storm"]
    assert abs(n[F["success_rel"]] - 1) < 0.05 and n[F["failed_rel"]] < 0.03 and n[F["retrans_rel"]] < 0.03
    assert 0.5 < n[F["log_response_ms"]] < 4.0 and abs(n[F["concurrency_delta"]]) < 0.5
    # blocked: nothing succeeds or is answered, retransmissions surge, pending calls pile up
    assert bl[F["success_rel"]] < 0.3 and bl[F["retrans_rel"]] > 2.0
    assert bl[F["log_response_ms"]] < 0.5 and bl[F["concurrency_delta"]] > 2.0
    # capacity_limit: much of the (surged) load fails fast
    assert cap[F["failed_rel"]] > 0.3 and cap[F["success_rel"]] < 0.7 and cap[F["retrans_rel"]] < 0.05
    # ... refused with an answer; a blocked path's calls time out instead
    assert cap[F["refused_log"]] > 1.0 and bl[F["refused_log"]] < 0.1 < bl[F["failed_log"]]
    # retrans_storm: calls succeed, but with many retransmissions and slow answers
    assert st[F["success_rel"]] > 0.8 and st[F["retrans_rel"]] > 0.3
    assert st[F["log_response_ms"]] > n[F["log_response_ms"]] + 2.5


def test_capacity_limit_caps_concurrency_per_source(run_all) -> None:
    """Concurrency relative to the (surged) load drops under a capacity limit, on every source."""
    records, labels = run_all
    for s, cols in by_source(records).items():
        ws = class_windows(cols, label_array(labels, s, len(cols["OutgoingCall"])))
        if "capacity_limit" in ws and "normal" in ws:
            cap = np.mean(ws["capacity_limit"], axis=0)[F["concurrency_rel"]]
            assert cap < 0.8 * np.mean(ws["normal"], axis=0)[F["concurrency_rel"]], s


def test_derived_features_are_load_invariant() -> None:
    records, labels = simulate(6, MINUTES, seed=11, params=FIXED)
    data = by_source(records)
    loads = {s: c["OutgoingCall"].mean() for s, c in data.items()}
    lo, hi = min(loads, key=loads.__getitem__), max(loads, key=loads.__getitem__)
    assert loads[hi] > 10 * loads[lo]
    means = {}
    for s in (lo, hi):
        ws = class_windows(data[s], label_array(labels, s, len(data[s]["OutgoingCall"])))["normal"]
        means[s] = np.mean(ws, axis=0)
    a, b = means[lo], means[hi]
    for name in ("offered_rel", "success_rel", "failed_rel", "retrans_rel"):
        assert abs(a[F[name]] - b[F[name]]) < 0.05, name
    # a random walk of (arrivals - departures) / load: noisier at ~1 call/s, but centred on 0
    assert abs(a[F["concurrency_delta"]]) < 0.6 and abs(b[F["concurrency_delta"]]) < 0.1
    assert abs(a[F["concurrency_rel"]] / b[F["concurrency_rel"]] - 1) < 0.1   # ~ the hold time, 10 s
    assert abs(b[F["concurrency_rel"]] - 10) < 1.5
    # same far end (5 ms): at ~2 calls/s some seconds have no answer (reported 0), lowering the mean
    assert abs(a[F["log_response_ms"]] - b[F["log_response_ms"]]) < 1.0


def test_every_source_is_its_own_testbed() -> None:
    """Hold and response times span the ranges real source_testbeds show, so a model cannot rely on them."""
    tb = source_testbeds(40, seed=3, minutes=10)
    hold = [t["hold_s"] for t in tb.values()]
    resp = [t["response_ms"] for t in tb.values()]
    p = SimParams()
    assert p.hold_s[0] <= min(hold) < 4 and 40 < max(hold) <= p.hold_s[1]
    assert p.response_ms[0] <= min(resp) < 3 and 20 < max(resp) <= p.response_ms[1]
    assert 0 < sum(t["paced"] for t in tb.values()) < 40
    assert {t["invite_retrans"] for t in tb.values()} == set(p.invite_retrans)
    # the constants are the ones simulate uses: a long hold shows as a high concurrency per call
    calm = SimParams(faults=())
    records, _ = simulate(4, 5, seed=3, params=calm)
    tb4 = source_testbeds(4, seed=3, params=calm, minutes=5)
    for s, cols in by_source(records).items():
        load = cols["OutgoingCall"].mean()
        assert cols["CurrentCall"].mean() / load == pytest.approx(tb4[s]["hold_s"], rel=0.35, abs=1.0), s


def test_paced_sources_offer_a_steady_rate() -> None:
    records, _ = simulate(4, 5, seed=2, params=SimParams(faults=(), paced_fraction=1.0, load_range=(20, 30)))
    for cols in by_source(records).values():
        offered = cols["OutgoingCall"]
        # second to second the count moves by at most ~1 (plus the slow drift of the load);
        # Poisson arrivals would move it by ~1.1 sqrt(mean), ~5.7 here
        assert np.abs(np.diff(offered)).mean() < 1.0


def test_normal_load_steps_abruptly_without_a_label() -> None:
    """Traffic changes level without a fault (a campaign, a fail-over): a surge alone is no fault."""
    p = SimParams(faults=(), load_range=(100.0, 100.0), diurnal_amplitude=0.0, walk_sigma=0.0, paced_fraction=1.0,
                  load_steps_per_hour=30.0)
    records, labels = simulate(2, 20, seed=6, params=p)
    assert labels == []
    for cols in by_source(records).values():
        level = np.convolve(cols["OutgoingCall"], np.ones(10) / 10, mode="valid")
        jumps = np.abs(np.log(level[10:] / level[:-10]))
        assert jumps.max() > np.log(1.3)                        # at least one step of 30 % or more
        assert level.min() >= 0.5 * 100 - 5 and level.max() <= 2.0 * 100 + 5   # within load_step x base


def test_a_blocked_path_fails_calls_in_progress_too() -> None:
    """With long holds, calls answered before the block end with a BYE that is lost: they fail
    (timer F, 32 s) instead of completing, so success drops at once, as on the SIPp testbed."""
    params = SimParams(faults=("blocked",), hold_s=(60.0, 60.0), load_range=(50.0, 60.0), fault_duration_s=(90, 90))
    records, labels = simulate(2, 20, seed=4, params=params)
    data = by_source(records)
    for s, a, b in episodes(labels, "blocked"):
        c = data[s]
        load = c["OutgoingCall"][a - 60 : a].mean()
        assert c["SuccessfulCall"][a + 2 : b].mean() < 0.02 * load
        # calls held at the start (~60 s x load of them) fail 32 s after their BYE was due
        assert c["FailedCall"][a + 32 : b].sum() > 1.5 * c["OutgoingCall"][a : b - 32].sum()


def _gaps(labels: list[LabelInterval]) -> list[float]:
    """Seconds between one fault's end and the next one's start, per source."""
    by: dict[str, list[LabelInterval]] = {}
    for iv in sorted(labels, key=lambda iv: iv.start):
        by.setdefault(iv.source, []).append(iv)
    return [b.start - a.end for ivs in by.values() for a, b in itertools.pairwise(ivs)]


def test_faults_back_to_back_on_request() -> None:
    """after_fault: that share of faults starts within after_fault_gap_s of the previous one's end
    (its aftermath still in the window); by default every fault follows min_gap_s of normal traffic."""
    base = SimParams(fault_duration_s=(20.0, 40.0), fault_fraction=0.3)
    _, default = simulate(4, 30, seed=3, params=base)
    assert len(_gaps(default)) >= 8 and min(_gaps(default)) >= base.min_gap_s
    _, b2b = simulate(4, 30, seed=3, params=SimParams(fault_duration_s=(20.0, 40.0), fault_fraction=0.3,
                                                       after_fault=1.0, after_fault_gap_s=(3.0, 6.0)))
    gaps = _gaps(b2b)
    assert len(gaps) >= 8 and all(3.0 <= g <= 6.0 for g in gaps)


def test_bad_arguments() -> None:
    with pytest.raises(NetsiamError):
        simulate(0, 5, seed=1)
    with pytest.raises(NetsiamError):
        simulate(1, 0, seed=1)
    with pytest.raises(NetsiamError):
        SimParams(faults=("meltdown",))
    with pytest.raises(NetsiamError):
        SimParams(load_range=(300.0, 2.0))
    with pytest.raises(NetsiamError):
        SimParams(hold_s=(0.0, 10.0))
    with pytest.raises(NetsiamError):
        SimParams(invite_retrans=(9,))
    with pytest.raises(NetsiamError):
        SimParams(after_fault=1.5)
    with pytest.raises(NetsiamError):
        SimParams(after_fault_gap_s=(10.0, 2.0))


def test_progress_bar_on_stderr(capsys) -> None:
    simulate(2, 1, seed=1, progress=True)
    captured = capsys.readouterr()
    assert "simulate" in captured.err and captured.out == ""


def test_varied_faults_show_their_real_signatures() -> None:
    """VARIED (the shipped model's training data): partial blocking, capacity drops at constant load,
    calls held until a short UA timeout, and cold starts, each with the counters real SIPp shows."""
    from netsiam.trainer.simulate import VARIED

    only = {
        "partial": SimParams(faults=("blocked",), partial_block_fraction=1.0, ua_timeout_fraction=0.0),
        "drop": SimParams(faults=("capacity_limit",), capacity_modes=("drop",), load_steps_per_hour=0.0),
        "hold": SimParams(faults=("capacity_limit",), capacity_modes=("drop",), hold_fraction=1.0,
                          ua_timeout_fraction=1.0, ua_timeout_s=(4.0, 4.0), drop_capacity=(0.0, 0.5)),
        "cold": SimParams(faults=(), cold_start_fraction=1.0, hold_s=(30.0, 30.0), load_range=(10.0, 50.0)),
    }
    runs = {k: simulate(4, 15, seed=2, params=p) for k, p in only.items()}
    checked = set()
    for name, (records, labels) in runs.items():
        data = by_source(records)
        for s, a, b in [(iv.source, int(iv.start - EPOCH), int(iv.end - EPOCH)) for iv in labels]:
            c = data[s]
            offered = c["OutgoingCall"][a:b].sum()
            if offered < 50 or b - a < 15:
                continue
            checked.add(name)
            if name == "partial":     # some calls still complete, the lost ones are retransmitted
                assert c["SuccessfulCall"][a + 5 : b].sum() > 0 and c["Retransmissions"][a:b].sum() > 0.3 * offered
            elif name == "drop":      # no surge: the load stays, calls are refused at once
                before = c["OutgoingCall"][max(0, a - 30) : a].mean()
                assert abs(c["OutgoingCall"][a:b].mean() / before - 1) < 0.35
                assert c["FailedCallRejected"][a:b].sum() > 0.05 * offered
            elif name == "hold":      # refused by silence: failures come with the timeout, no retransmission
                assert c["FailedTimeoutOnRecv"][a + 5 : b + 5].sum() > 0.3 * offered
                assert c["FailedCallRejected"][a:b].sum() <= 0.05 * offered + 2
                assert c["Retransmissions"][a:b].sum() <= 0.05 * offered + 2
    assert checked == {"partial", "drop", "hold"}
    for c in by_source(runs["cold"][0]).values():   # calls pile up from zero for about a hold time
        assert c["CurrentCall"][0] <= c["OutgoingCall"][0] and c["CurrentCall"][40] > 10 * c["CurrentCall"][0] + 5
    assert VARIED.partial_block_fraction > 0 and VARIED.cold_start_fraction > 0
