"""Evaluation metrics on hand-made cases with known answers, the baselines, and the CLI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from helpers import MeanEncoder, lstm_encoder, manifest, prototypes_at, small_artifact

from netsiam.config import Config, DebounceConfig, PrototypeConfig, WindowConfig
from netsiam.errors import EXIT_DATA, NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.serving import Artifact
from netsiam.traceio import LabelInterval, write_labels, write_trace
from netsiam.trainer.baselines import RawNearestPrototype, ZScoreRule, split_support
from netsiam.trainer.dataset import LabelledWindows
from netsiam.trainer.detection import (
    Episode,
    Event,
    alarm_share,
    detect_events,
    episodes_from_intervals,
    episodes_from_windows,
    false_alarms_per_hour,
    match_episodes,
)
from netsiam.trainer.evaluate import evaluate, evaluate_detailed
from netsiam.trainer.evaluate_cli import per_class_lines
from netsiam.trainer.scores import (
    accuracy,
    confusion,
    open_set_truth,
    pair_scores,
    per_class_metrics,
    roc_auc,
    roc_curve,
)

FEATS = ("offered_rel", "success_rel", "failed_rel")
T, STRIDE = 4, 2
REPO = Path(__file__).resolve().parent.parent
DESIGN_KEYS = ("window_accuracy", "n_way_accuracy", "auc", "per_class", "confusion", "false_alarms_per_hour",
               "episodes")
EPISODE_KEYS = ("label", "start", "end", "detected", "detected_label", "delay_s")


# --------------------------------------------------------------------------- helpers


def stub_artifact(points: dict[str, tuple[float, float, float]], threshold: float = 0.2) -> Artifact:
    return small_artifact(MeanEncoder(), prototypes_at(points, threshold),
                          manifest(length=T, stride=STRIDE, features=FEATS, version="stub"))


def windows(emb: list[tuple[float, float, float]], labels: list[str], sources: list[str],
            end_ts: list[float], straddle: list[bool] | None = None) -> LabelledWindows:
    """LabelledWindows whose every time step equals the wanted embedding (so MeanEncoder returns it)."""
    x = np.repeat(np.asarray(emb, dtype=np.float32)[:, None, :], T, axis=1)
    n = len(emb)
    return LabelledWindows(np.zeros((n, T, len(RAW_METRICS))), x, np.asarray(end_ts, dtype=np.float64),
                           np.asarray(sources, dtype=object), np.asarray(labels, dtype=object),
                           np.asarray(straddle or [False] * n, dtype=bool))


def cfg() -> Config:
    return Config(window=WindowConfig(interval_s=1.0, length=T, stride=STRIDE, max_gap=5), features=FEATS)


POINTS = {"normal": (0.1, 0.1, 0.1), "blocked": (0.9, 0.1, 0.1), "capacity_limit": (0.1, 0.9, 0.1)}


# --------------------------------------------------------------------------- window metrics


def test_open_set_truth_and_accuracy() -> None:
    truth = open_set_truth(np.array(["normal", "storm", "blocked"], dtype=object), ["normal", "blocked"])
    assert truth.tolist() == ["normal", "unknown", "blocked"]
    assert accuracy(np.array(["normal", "unknown", "normal"]), truth) == pytest.approx(2 / 3)
    assert accuracy(np.array([]), np.array([])) is None


def test_confusion_and_per_class() -> None:
    truth = np.array(["a", "a", "a", "b", "b", "u"], dtype=object)
    pred = np.array(["a", "a", "b", "b", "u", "u"], dtype=object)
    m = confusion(truth, pred, ["a", "b", "u"])
    assert m.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    pc = per_class_metrics(truth, pred, ["a", "b", "u", "c"])
    assert pc["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert pc["b"]["precision"] == pytest.approx(0.5) and pc["b"]["recall"] == pytest.approx(0.5)
    assert pc["u"]["precision"] == pytest.approx(0.5) and pc["u"]["recall"] == 1.0
    assert pc["u"]["f1"] == pytest.approx(2 / 3)
    assert pc["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}   # zero_division=0
    # the printed summary says "-" where the ratio is undefined, not 0.000
    rows = per_class_lines(pc | {"n": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}},
                           {"labels": ["a", "b", "u", "c", "n"],
                            "matrix": [[2, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 0, 0], [0] * 5, [2, 0, 0, 0, 0]]})
    assert [r.split() for r in rows] == [["a", "1.000", "0.667", "0.800", "3"], ["b", "0.500", "0.500", "0.500", "2"],
                                         ["u", "0.500", "1.000", "0.667", "1"], ["c", "-", "-", "-", "0"],
                                         ["n", "-", "0.000", "0.000", "2"]]


def brute_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_brute_force_pair_count_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        scores = rng.integers(0, 6, 60).astype(float)   # many ties
        positive = rng.random(60) < 0.4
        assert roc_auc(scores, positive) == pytest.approx(brute_auc(scores, positive))
        fpr, tpr = roc_curve(scores, positive)
        assert (fpr[0], tpr[0]) == (0.0, 0.0) and fpr[-1] == pytest.approx(1) and tpr[-1] == pytest.approx(1)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        # trapezoids over tied groups count a tie one half, like the rank statistic
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert area == pytest.approx(roc_auc(scores, positive))
    assert roc_auc(np.array([1.0, 2.0]), np.array([True, True])) is None


def test_pair_scores_all_pairs_and_sampled() -> None:
    emb = np.array([[0, 0, 0], [0, 0, 0.1], [1, 1, 1], [1, 1, 0.9]], dtype=float)
    lab = np.array(["n", "n", "b", "b"], dtype=object)
    s, pos = pair_scores(emb, lab)
    assert len(s) == 6 and pos.sum() == 2
    assert roc_auc(s, pos) == 1.0
    # brute force over all pairs of a random embedding
    rng = np.random.default_rng(0)
    emb = rng.random((30, 3))
    lab = rng.choice(["a", "b", "c"], 30)
    s, pos = pair_scores(emb, lab)
    bs = np.array([-np.linalg.norm(emb[i] - emb[j]) for i, j in itertools.combinations(range(30), 2)])
    bp = np.array([lab[i] == lab[j] for i, j in itertools.combinations(range(30), 2)])
    assert roc_auc(s, pos) == pytest.approx(brute_auc(bs, bp))
    # sampled: fixed count, never a window with itself, same seed -> same answer
    s1, p1 = pair_scores(rng.random((2000, 3)), rng.choice(["a", "b"], 2000), max_pairs=5000)
    assert len(s1) == 5000 and np.all(s1 < 0)


# --------------------------------------------------------------------------- detection

DEB = DebounceConfig(raise_k=2, raise_n=3, clear_m=2)


def seq(source: str, classes: str, t0: float = 5.0, dt: float = 5.0) -> tuple[list[str], list[float], list[str]]:
    """'nnbbb' -> classes per window (n normal, b blocked, c capacity_limit, u unknown)."""
    names = {"n": "normal", "b": "blocked", "c": "capacity_limit", "u": "unknown"}
    return [source] * len(classes), [t0 + dt * k for k in range(len(classes))], [names[c] for c in classes]


def test_detect_events_follow_the_debounce() -> None:
    sa, ta, ca = seq("a", "nnbbbnnnunnccc")      # t = 5, 10, ..., 70
    sb, tb, cb = seq("b", "nbbnn")               # t = 5 .. 25
    # shuffled input: evaluate must feed each source in end_ts order, like the daemon
    order = np.random.default_rng(1).permutation(len(sa) + len(sb))
    src = np.asarray(sa + sb, dtype=object)[order]
    ts = np.asarray(ta + tb)[order]
    cls = np.asarray(ca + cb, dtype=object)[order]
    ev = detect_events(src, ts, cls, DEB)
    assert ev == [
        Event("a", "blocked", started_at=15.0, raised_at=20.0, cleared_at=35.0, end=35.0),
        Event("a", "capacity_limit", started_at=60.0, raised_at=65.0, cleared_at=None, end=70.0),  # still on
        Event("b", "blocked", started_at=10.0, raised_at=15.0, cleared_at=25.0, end=25.0),
    ]
    episodes = [Episode("a", "blocked", 12.0, 28.0), Episode("a", "capacity_limit", 58.0, 90.0),
                Episode("a", "blocked", 100.0, 110.0)]
    rep, useful = match_episodes(episodes, ev, grace_s=4.0)
    assert [r["detected"] for r in rep] == [True, True, False]
    assert [r["detected_label"] for r in rep] == ["blocked", "capacity_limit", None]
    assert [r["delay_s"] for r in rep] == [8.0, 7.0, None]
    assert all(r["label_correct"] for r in rep[:2])
    assert useful == [True, True, False]          # the raise on b overlaps no episode: a false alarm
    assert false_alarms_per_hour(useful.count(False), 0.5) == 2.0
    assert false_alarms_per_hour(0, 0.0) is None


def test_detection_grace_and_already_active() -> None:
    late = Event("a", "blocked", started_at=15.0, raised_at=20.0, cleared_at=30.0, end=30.0)
    ep = Episode("a", "blocked", 10.0, 14.0)      # ended before the alarm's first anomalous window
    assert match_episodes([ep], [late], grace_s=10.0)[0][0]["detected"]       # raised by 14 + 10
    assert not match_episodes([ep], [late], grace_s=5.0)[0][0]["detected"]    # 20 > 14 + 5
    early = Event("a", "unknown", started_at=0.0, raised_at=5.0, cleared_at=None, end=50.0)
    rep, _ = match_episodes([ep], [early], grace_s=0.0)
    assert rep[0]["detected"] and rep[0]["delay_s"] == 0.0 and rep[0]["already_active"]
    assert rep[0]["detected_label"] == "unknown" and not rep[0]["label_correct"]
    # a fault the model never learnt is named right when it is called unknown
    novel = Episode("a", "storm", 10.0, 14.0)
    assert match_episodes([novel], [early], 0.0, classes=["normal", "blocked"])[0][0]["label_correct"]
    assert not match_episodes([novel], [early], 0.0)[0][0]["label_correct"]
    other = Event("b", "blocked", 10.0, 12.0, None, 50.0)                      # wrong source
    assert not match_episodes([ep], [other], grace_s=100.0)[0][0]["detected"]


def test_back_to_back_episodes_each_keep_their_own_raise() -> None:
    # a surge 5 s after a freeze: the surge's raise falls in the freeze's grace but is the surge's event
    eps = [Episode("a", "blocked", 0.0, 40.0), Episode("a", "capacity_limit", 45.0, 85.0)]
    ev = [Event("a", "blocked", 0.0, 2.0, 43.0, 43.0), Event("a", "capacity_limit", 45.0, 47.0, 88.0, 88.0)]
    rep, useful = match_episodes(eps, ev, grace_s=10.0)
    assert [r["raised"] for r in rep] == [["blocked"], ["capacity_limit"]]
    assert [r["clear_s"] for r in rep] == [3.0, 3.0] and useful == [True, True]
    # a raise that spans both (still up when the next began) belongs to both
    long = [Event("a", "blocked", 0.0, 2.0, 60.0, 60.0)]
    rep, _ = match_episodes(eps, long, grace_s=10.0)
    assert rep[1]["already_active"] and rep[1]["detected_label"] == "blocked"


def test_episodes_from_intervals_and_windows() -> None:
    ivs = [LabelInterval("a", 10, 20, "blocked"), LabelInterval("a", 20, 30, "blocked"),
           LabelInterval("a", 40, 50, "normal"), LabelInterval("b", 5, 8, "capacity_limit")]
    assert episodes_from_intervals(ivs) == [Episode("a", "blocked", 10, 30), Episode("b", "capacity_limit", 5, 8)]
    src, ts, lab = seq("a", "nbbnc")
    eps = episodes_from_windows(np.asarray(src, dtype=object), np.asarray(ts), np.asarray(lab, dtype=object), 1.0)
    assert eps == [Episode("a", "blocked", 10.0, 16.0), Episode("a", "capacity_limit", 25.0, 26.0)]


# --------------------------------------------------------------------------- evaluate() end to end


def known_case() -> LabelledWindows:
    e_n, e_b, e_c, e_far, e_odd = POINTS["normal"], POINTS["blocked"], POINTS["capacity_limit"], \
        (0.9, 0.9, 0.9), (0.45, 0.1, 0.5)
    rows: list[tuple[tuple[float, float, float], str, bool]] = (
        [(e_n, "normal", False)] * 6 + [(e_odd, "normal", False)]        # 6 right, 1 unknown (n-way right)
        + [(e_b, "blocked", False)] * 4 + [(e_c, "blocked", False)]      # 4 right, 1 called capacity_limit
        + [(e_b, "blocked", True)]                                       # straddles: scored apart
        + [(e_far, "storm", False)] * 2 + [(e_n, "storm", False)])       # novel: 2 unknown, 1 normal
    n = len(rows)
    return windows([r[0] for r in rows], [r[1] for r in rows], ["s"] * n, [10.0 + 2 * k for k in range(n)],
                   [r[2] for r in rows])


def test_evaluate_known_answers() -> None:
    art = stub_artifact(POINTS)
    rep = evaluate(art, known_case(), cfg(), novel_labels=["storm", "never_seen"])
    for k in (*DESIGN_KEYS, "straddling", "novelty", "baselines", "n_windows", "model_version", "classes"):
        assert k in rep
    assert rep["n_windows"] == 16 and rep["classes"] == ["normal", "blocked", "capacity_limit"]
    assert rep["window_accuracy"] == pytest.approx(12 / 15)
    assert rep["n_way_accuracy"] == pytest.approx(11 / 12)
    assert rep["straddling"] == {"n_windows": 1, "accuracy": 1.0}
    assert rep["novelty"]["storm"]["unknown_rate"] == pytest.approx(2 / 3)
    assert rep["novelty"]["never_seen"] == {"n_windows": 0, "unknown_rate": None, "predicted": {}}
    assert rep["confusion"]["labels"] == ["normal", "blocked", "capacity_limit", "storm", "unknown"]
    assert rep["confusion"]["matrix"] == [[6, 0, 0, 0, 1], [0, 4, 1, 0, 0], [0] * 5, [1, 0, 0, 0, 2], [0] * 5]
    pc = rep["per_class"]
    assert pc["normal"]["precision"] == pytest.approx(6 / 7) and pc["normal"]["recall"] == pytest.approx(6 / 7)
    assert pc["blocked"]["precision"] == 1.0 and pc["blocked"]["recall"] == pytest.approx(4 / 5)
    assert pc["unknown"]["support"] == 3 and pc["unknown"]["recall"] == pytest.approx(2 / 3)
    assert 0.5 < rep["auc"] <= 1.0


def test_evaluate_detection_through_the_debounce() -> None:
    # one source, windows every 2 s: normal, then blocked (k=2 of n=3 raises), then normal again
    lab = ["normal"] * 10 + ["blocked"] * 6 + ["normal"] * 10
    pts = [POINTS[x] for x in lab]
    ts = [100.0 + 2 * k for k in range(len(lab))]
    lw = windows(pts, lab, ["s"] * len(lab), ts)
    ivs = [LabelInterval("s", 119.5, 131.5, "blocked")]
    ev = evaluate_detailed(stub_artifact(POINTS), lw, cfg(), intervals=ivs)
    rep = ev.report
    assert rep["episodes"] == [{"source": "s", "label": "blocked", "start": 119.5, "end": 131.5, "detected": True,
                                "detected_label": "blocked", "delay_s": 122.0 - 119.5, "already_active": False,
                                "label_correct": True, "first_label_correct": True, "raised": ["blocked"],
                                "clear_s": 134.0 - 131.5}]
    assert rep["false_alarms_per_hour"] == 0.0
    assert rep["detection"]["normal_hours"] == pytest.approx(20 * STRIDE / 3600)
    assert ev.events == [Event("s", "blocked", 120.0, 122.0, 134.0, 134.0)]
    # the same trace with a spurious 2-window blip in the normal part: one false alarm
    lab2 = lab[:3] + ["normal", "normal"] + lab[5:]
    pts2 = pts[:3] + [POINTS["capacity_limit"]] * 2 + pts[5:]
    rep2 = evaluate(stub_artifact(POINTS), windows(pts2, lab2, ["s"] * len(lab2), ts), cfg(), intervals=ivs)
    assert rep2["detection"]["false_alarms"] == 1
    assert rep2["false_alarms_per_hour"] == pytest.approx(1 / (20 * STRIDE / 3600))
    # without intervals, episodes come from the windows' labels
    rep3 = evaluate(stub_artifact(POINTS), lw, cfg())
    assert [(e["start"], e["end"], e["detected"]) for e in rep3["episodes"]] == [(120.0, 131.0, True)]


def test_the_report_and_its_encoder_column_judge_the_same_episodes() -> None:
    # the recording began in a fault that ended before the first window did: no column judges it
    lab = ["normal"] * 10 + ["blocked"] * 6 + ["normal"] * 10
    lw = windows([POINTS[x] for x in lab], lab, ["s"] * len(lab), [100.0 + 2 * k for k in range(len(lab))])
    ivs = [LabelInterval("s", 95.0, 99.0, "blocked"), LabelInterval("s", 119.5, 131.5, "blocked")]
    ev = evaluate_detailed(stub_artifact(POINTS), lw, cfg(), intervals=ivs, support=lw)   # every window scored
    rep = ev.report
    assert [e["start"] for e in rep["episodes"]] == [119.5] and [e.start for e in ev.episodes] == [119.5]
    # each baseline column judges its own detector on those episodes
    for name in ("expert_rule", "raw_nearest_prototype", "zscore_rule"):
        assert [e["start"] for e in rep["baselines"][name]["episodes"]] == [119.5], name
        assert rep["baselines"][name]["detection"]["episodes"] == rep["detection"]["episodes"] == 1


# --------------------------------------------------------------------------- baselines


def blobs(n: int, shift: dict[str, tuple[int, float]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows (n per class, T=6, F=3): noise around 0, a class moves one feature by a constant."""
    rng = np.random.default_rng(seed)
    xs, ls = [], []
    for lab, (f, d) in shift.items():
        x = rng.normal(0, 0.3, (n, 6, 3))
        x[:, :, f] += d
        xs.append(x)
        ls += [lab] * n
    return np.concatenate(xs), np.asarray(ls, dtype=object)


SHIFTS = {"normal": (0, 0.0), "blocked": (0, 5.0), "capacity_limit": (1, 5.0)}
CLASSES = ["normal", "blocked", "capacity_limit"]


def test_raw_nearest_prototype_is_right_on_obvious_blobs() -> None:
    xs, ls = blobs(40, SHIFTS, seed=0)
    xt, lt = blobs(20, SHIFTS | {"storm": (2, 8.0)}, seed=1)
    m = RawNearestPrototype(np.zeros(3), np.ones(3), PrototypeConfig()).fit(xs, ls, CLASSES)
    pred, nway = m.predict(xt)
    known = lt != "storm"
    assert (pred[known] == lt[known]).all() and (nway[known] == lt[known]).all()
    assert (pred[~known] == "unknown").all()      # far from every prototype -> unknown


def test_zscore_rule_flags_and_names_obvious_faults() -> None:
    xs, ls = blobs(40, SHIFTS, seed=0)
    xt, lt = blobs(20, SHIFTS | {"storm": (2, 8.0)}, seed=1)
    z = ZScoreRule().fit(xs, ls, CLASSES)
    pred, nway = z.predict(xt)
    known = lt != "storm"
    assert (pred[known] == lt[known]).all()
    assert (pred[~known] != "normal").all()        # novel fault still flagged as anomalous
    assert (nway[known] == lt[known]).all()
    # a feature constant in normal windows must not turn float noise into alarms
    flat = np.zeros((10, 6, 3))
    z2 = ZScoreRule().fit(flat, np.asarray(["normal"] * 10, dtype=object), ["normal"])
    assert (z2.predict(flat + 1e-7)[0] == "normal").all()


def test_split_support_keeps_parts_disjoint() -> None:
    ts = np.arange(0.0, 101.0, 5.0)
    src = np.asarray(["a"] * len(ts), dtype=object)
    sup, scored = split_support(src, ts, window_span_s=10.0)
    assert ts[sup].max() == 50.0 and ts[scored].min() == 65.0   # 55, 60 overlap the cut: dropped
    assert not (sup & scored).any()


def test_baselines_in_the_report_use_the_same_scored_windows() -> None:
    lab = (["normal"] * 20 + ["blocked"] * 10 + ["normal"] * 10 + ["capacity_limit"] * 10) * 2
    pts = [POINTS[x] for x in lab]
    lw = windows(pts, lab, ["s"] * len(lab), [10.0 + 2 * k for k in range(len(lab))])
    b = evaluate(stub_artifact(POINTS), lw, cfg())["baselines"]
    assert b["encoder"]["n_windows"] == b["raw_nearest_prototype"]["n_windows"] == b["zscore_rule"]["n_windows"]
    assert 0 < b["encoder"]["n_windows"] < len(lab) / 2 + 1
    for name in ("encoder", "raw_nearest_prototype", "zscore_rule"):
        assert b[name]["window_accuracy"] == 1.0 and b[name]["binary_accuracy"] == 1.0
    # every column carries the encoder's figures: per class, and false alarms per hour of normal stream
    for name in ("encoder", "expert_rule", "raw_nearest_prototype", "zscore_rule"):
        assert b[name]["false_alarms_per_hour"] == b[name]["detection"]["false_raises_per_hour"]
        assert set(b[name]["per_class"]) >= {"normal", "blocked", "capacity_limit"}
    assert b["encoder"]["per_class"]["blocked"]["recall"] == 1.0
    assert sum(c["support"] for c in b["encoder"]["per_class"].values()) == b["encoder"]["n_windows"]
    # ... and its confusion matrix and episodes: the same episodes, each judged by that column's detector
    for name in ("encoder", "expert_rule", "raw_nearest_prototype", "zscore_rule"):
        assert sum(map(sum, b[name]["confusion"]["matrix"])) == b[name]["n_windows"]
        assert [(e["label"], e["start"]) for e in b[name]["episodes"]] == [
            (e["label"], e["start"]) for e in b["encoder"]["episodes"]]
        assert sum(e["detected"] for e in b[name]["episodes"]) == b[name]["detection"]["detected"]
    assert b["encoder"]["episodes"] and all(e["detected_label"] == e["label"] for e in b["encoder"]["episodes"])


# --------------------------------------------------------------------------- CLI


def write_case(d: Path) -> tuple[Path, Path]:
    """Two sources, 4 minutes at 1 s: a blocked fault on a, a capacity limit on b."""
    rng = np.random.default_rng(0)
    t0 = 1795384000.0
    recs: list[dict[str, Any]] = []
    for src, (fs, fe, kind) in {"a": (100, 160, "blocked"), "b": (120, 180, "capacity_limit")}.items():
        for k in range(240):
            off = float(rng.poisson(20))
            fault = fs <= k < fe
            ok = 0.0 if fault and kind == "blocked" else (min(off, 12.0) if fault else off)
            recs.append({"source": src, "ts": t0 + k, "metrics": {
                "OutgoingCall": off * (2 if fault and kind != "blocked" else 1), "SuccessfulCall": ok,
                "FailedCall": off - ok if fault else 0.0, "Retransmissions": off * 3 if fault else 0.0,
                "CurrentCall": off * 5, "ResponseTime1": 0.0 if ok == 0 else 5.0,
                "FailedMaxUDPRetrans": off - ok if fault and kind == "blocked" else 0.0, "FailedTimeoutOnRecv": 0.0}})
    trace, labels = d / "trace.jsonl", d / "labels.csv"
    write_trace(trace, recs)
    write_labels(labels, [LabelInterval("a", t0 + 100, t0 + 160, "blocked"),
                          LabelInterval("b", t0 + 120, t0 + 180, "capacity_limit")])
    return trace, labels


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    protos = prototypes_at({"normal": np.full(3, 0.3), "blocked": np.full(3, 0.5), "capacity_limit": np.full(3, 0.7)},
                           0.15)
    man = manifest(length=10, stride=5, version="tiny-test",
                   history={"loss": [0.5, 0.3, 0.2], "val_loss": [0.6, 0.4, 0.35]})
    out = tmp_path_factory.mktemp("art") / "model"
    small_artifact(lstm_encoder(10), protos, man, out)
    return out


def netsiam(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("NETSIAM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "netsiam", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_cli_evaluate_writes_the_design_keys(tiny_artifact: Path, tmp_path: Path) -> None:
    trace, labels = write_case(tmp_path)
    report, plots = tmp_path / "report.json", tmp_path / "plots"
    r = netsiam("evaluate", "--model", str(tiny_artifact), "--data", str(trace), "--labels", str(labels),
                "--json", str(report), "--plots", str(plots), "--novel", "storm")
    assert r.returncode == 0, r.stderr
    rep = orjson.loads(report.read_bytes())
    for k in (*DESIGN_KEYS, "straddling", "novelty", "baselines", "n_windows", "model_version", "classes"):
        assert k in rep, k
    # the artifact's window (length 10, stride 5), not config.yaml's: ends at seconds 10, 15, ..., 235
    assert rep["n_windows"] == 2 * len(range(10, 240, 5))
    assert len(rep["episodes"]) == 2
    for ep in rep["episodes"]:
        assert all(k in ep for k in EPISODE_KEYS)
    assert {"normal", "blocked"} <= set(rep["per_class"])
    # docs/formats.md names every key a script may read
    doc = (REPO / "docs" / "formats.md").read_text()
    doc = doc[doc.index("## Evaluation report"):doc.index("## Model artifact")]
    keys = {*rep, *rep["detection"], *rep["episodes"][0], *rep["baselines"],
            *(k for name in ("encoder", "expert_rule", "raw_nearest_prototype") for k in rep["baselines"][name])}
    assert not [k for k in keys if f"`{k}`" not in doc]
    assert "window accuracy" in r.stdout and "episodes detected" in r.stdout
    assert {p.name for p in plots.iterdir()} >= {"embedding_3d.png", "confusion.png", "roc.png",
                                                  "timeline.png", "training_curves.png"}


def test_cli_evaluate_refuses_the_detectors_verdicts_as_truth(tiny_artifact: Path, tmp_path: Path) -> None:
    trace, labels = write_case(tmp_path)
    draft = tmp_path / "draft.csv"   # a `netsiam dump --labels` draft, its unknown episode not renamed
    draft.write_text(labels.read_text().replace(",blocked", ",unknown"))
    r = netsiam("evaluate", "--model", str(tiny_artifact), "--data", str(trace), "--labels", str(draft))
    assert r.returncode == EXIT_DATA and "label(s) unknown: the detector's verdicts" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_evaluate_warns_when_the_labels_cannot_apply(tiny_artifact: Path, tmp_path: Path) -> None:
    """Labels of other sources (another capture's file) read as all-normal, a report that looks fine."""
    trace, labels = write_case(tmp_path)
    r = netsiam("evaluate", "--model", str(tiny_artifact), "--data", str(trace), "--labels", str(labels))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    other = tmp_path / "other.csv"
    rows = labels.read_text().splitlines()
    other.write_text("\n".join([rows[0], *("elsewhere," + ln.split(",", 1)[1] for ln in rows[1:])]) + "\n")
    r = netsiam("evaluate", "--model", str(tiny_artifact), "--data", str(trace), "--labels", str(other),
                "--novel", "nosuchclass")
    assert r.returncode == 0
    assert "the labels name none of the trace's sources (labels: elsewhere" in r.stderr, r.stderr
    assert "--novel nosuchclass: no label interval names it" in r.stderr


def test_cli_evaluate_missing_file_is_one_line(tiny_artifact: Path, tmp_path: Path) -> None:
    r = netsiam("evaluate", "--model", str(tiny_artifact), "--data", str(tmp_path / "nope.jsonl"),
                "--labels", str(tmp_path / "nope.csv"), "--json", str(tmp_path / "r.json"))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "r.json").exists()


def test_alarm_share_exposes_an_alarm_that_never_clears() -> None:
    on = [Event("a", "blocked", 0.0, 5.0, None, 100.0), Event("b", "blocked", 0.0, 10.0, 20.0, 20.0)]
    src = np.asarray(["a", "a", "b", "b", "b"], dtype=object)
    ts = np.asarray([0.0, 50.0, 5.0, 15.0, 20.0])
    assert alarm_share(src, ts, on) == pytest.approx(2 / 5)   # a@50 and b@15; b@20 is the clearing window
    assert alarm_share(src[:0], ts[:0], on) is None


def test_load_labelled_keeps_two_recordings_of_one_source_apart(tmp_path: Path) -> None:
    from netsiam.trainer.evaluate import config_for_artifact, load_labelled

    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    t1, l1 = write_case(tmp_path / "1")
    t2, l2 = write_case(tmp_path / "2")           # same sources, same times: a second recording
    art = stub_artifact(POINTS)
    c = config_for_artifact(Config(), art, explicit=False)
    assert c.window.length == T and c.features == FEATS   # the artifact's window, not the defaults
    lw, ivs = load_labelled([str(t1), str(t2)], [str(l1), str(l2)], c)
    assert set(lw.sources.tolist()) == {"0:a", "0:b", "1:a", "1:b"}
    assert {iv.source for iv in ivs} == {"0:a", "0:b", "1:a", "1:b"}
    assert len(episodes_from_intervals(ivs)) == 4
    with pytest.raises(NetsiamError, match="do not match the model"):
        config_for_artifact(Config(), art, explicit=True)
