"""Training: time split, data checks, a small end-to-end run, determinism, the CLI's failure mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from netsiam.cli import main
from netsiam.config import Config, override
from netsiam.errors import NetsiamError
from netsiam.evidence import MARK_KEY, SIGNATURE_KEY
from netsiam.features import DEFAULT_FEATURES
from netsiam.serving import load_artifact
from netsiam.traceio import write_labels, write_trace
from netsiam.trainer import train as train_module
from netsiam.trainer.augment import thin_windows
from netsiam.trainer.dataset import build_windows
from netsiam.trainer.outliers import Exposure, outlier_scales, synthetic_outliers
from netsiam.trainer.probe import pick_candidate, probe_artifact, probe_spreads, shift_probe
from netsiam.trainer.scores import pair_scores, roc_auc
from netsiam.trainer.simulate import SimParams, simulate
from netsiam.trainer.split import aftermath_of, in_aftermath, label_runs, load_windows, split_validation
from netsiam.trainer.train import train, training_evidence


def sim_files(tmp: Path, name: str, sources: int, minutes: float, seed: int,
              params: SimParams | None = None) -> tuple[Path, Path]:
    records, labels = simulate(sources, minutes, seed, params or SimParams())
    trace, lab = tmp / f"{name}.jsonl", tmp / f"{name}.csv"
    write_trace(trace, records)
    write_labels(lab, labels)
    return trace, lab


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("sim")
    return {"train": sim_files(tmp, "train", 6, 20, seed=7), "test": sim_files(tmp, "test", 3, 15, seed=8)}


# ------------------------------------------------------------------------------------ data preparation


def _timeline(spec: list[tuple[str, int]], t0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One window per second: [(label, seconds), ...] -> (end_ts, labels)."""
    labels = np.array([lab for lab, n in spec for _ in range(n)], dtype=object)
    return t0 + np.arange(len(labels), dtype=np.float64), labels


def test_validation_is_chosen_per_class_not_the_tail_of_the_recording() -> None:
    """An 11-minute recording with its faults early (the case that used to leave validation one class)."""
    end_ts, labels = _timeline([("normal", 60), ("blocked", 40), ("normal", 100), ("capacity_limit", 60),
                                ("normal", 400)])
    groups = np.full(len(end_ts), "0:a", dtype=object)
    train_m, val_m, overlapping = split_validation(end_ts, groups, labels, 0.2, span_s=9.0)
    assert not np.any(train_m & val_m) and overlapping == []
    for c in ("normal", "blocked", "capacity_limit"):
        assert np.sum(val_m & (labels == c)) >= 1 and np.sum(train_m & (labels == c)) >= 2, c
    # each fault's validation windows are the end of its one episode
    for c in ("blocked", "capacity_limit"):
        t = end_ts[labels == c]
        assert end_ts[val_m & (labels == c)].min() >= t.min() + 0.75 * (t.max() - t.min())
    # no training window shares a sample with a validation window
    for t in end_ts[train_m]:
        assert np.all(np.abs(end_ts[val_m] - t) > 9.0)


def test_a_class_with_many_episodes_holds_out_whole_episodes() -> None:
    spec: list[tuple[str, int]] = []
    for _ in range(10):
        spec += [("normal", 60), ("blocked", 20)]
    end_ts, labels = _timeline(spec)
    groups = np.full(len(end_ts), "0:a", dtype=object)
    train_m, val_m, _ = split_validation(end_ts, groups, labels, 0.2, span_s=9.0)
    runs = label_runs(end_ts, groups, labels)
    blocked_runs = np.unique(runs[labels == "blocked"])
    held = [r for r in blocked_runs if np.all(val_m[runs == r])]
    assert len(held) == 2                                          # every 5th of 10 episodes, whole
    assert all(not np.any(val_m[runs == r]) for r in blocked_runs if r not in held)


def test_a_short_single_episode_still_trains_with_an_overlapping_split() -> None:
    end_ts, labels = _timeline([("normal", 120), ("blocked", 6), ("normal", 60)])
    groups = np.full(len(end_ts), "0:a", dtype=object)
    train_m, val_m, overlapping = split_validation(end_ts, groups, labels, 0.2, span_s=9.0)
    assert overlapping == ["blocked"]
    assert np.sum(train_m & (labels == "blocked")) >= 2 and np.sum(val_m & (labels == "blocked")) >= 1


def test_load_windows_keeps_recordings_apart(data: dict[str, tuple[Path, Path]]) -> None:
    (t1, l1), (t2, l2) = data["train"], data["test"]
    lw, groups = load_windows(Config(), [t1, t2], [l1, l2])
    one = build_windows([t1], [l1], Config())
    assert len(lw) == len(one) + len(build_windows([t2], [l2], Config()))
    assert set(groups[: len(one)]) == {f"0:{s}" for s in one.sources}
    assert all(g.startswith("1:") for g in groups[len(one):])
    np.testing.assert_array_equal(lw.labels[: len(one)], one.labels)   # labels paired by position


def _pair_auc(emb: np.ndarray, labels: np.ndarray) -> float | None:
    return roc_auc(*pair_scores(emb, labels))


def test_pair_auc_matches_the_definition() -> None:
    emb = np.array([[0.0, 0, 0], [0.1, 0, 0], [1, 1, 1], [0.9, 1, 1]])
    assert _pair_auc(emb, np.array(["a", "a", "b", "b"])) == 1.0
    # a pair at opposite corners (farther than every mixed pair) and a tight pair: AUC 1/2
    corners = np.array([[0.0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [0.5, 0.5, 0.6]])
    assert _pair_auc(corners, np.array(["a", "a", "b", "b"])) == 0.5
    assert _pair_auc(emb, np.array(["a", "a", "a", "a"])) is None


# ------------------------------------------------------------------------------------ augmentation


def test_thinning_keeps_the_shape_of_a_window_at_a_lower_load(data: dict[str, tuple[Path, Path]]) -> None:
    from netsiam.features import RAW_METRICS, derive

    trace, labels = data["train"]
    lw = build_windows([trace], [labels], Config())
    i = {m: j for j, m in enumerate(RAW_METRICS)}
    busy = lw.raw[:, :, i["OutgoingCall"]].mean(axis=1) > 20
    raw = lw.raw[busy & ~lw.straddle]
    thin = thin_windows(np.random.default_rng(0), raw, np.full(len(raw), 0.25))
    assert thin.shape == raw.shape and np.all(thin >= 0)
    timeouts = thin[..., i["FailedMaxUDPRetrans"]] + thin[..., i["FailedTimeoutOnRecv"]]
    assert np.all(timeouts <= thin[..., i["FailedCall"]])                                # a part of the failures
    for m in ("OutgoingCall", "SuccessfulCall", "FailedCall", "Retransmissions", "CurrentCall", "FailedMaxUDPRetrans"):
        assert thin[..., i[m]].sum() == pytest.approx(0.25 * raw[..., i[m]].sum(), rel=0.05), m
        assert np.all(thin[..., i[m]] == np.round(thin[..., i[m]])), m            # still counts
    # a gauge, not noise: CurrentCall moves by thinned arrivals minus departures
    assert np.abs(np.diff(thin[..., i["CurrentCall"]], axis=1)).mean() < np.abs(
        np.diff(raw[..., i["CurrentCall"]], axis=1)).mean()
    # derived (load-relative) features keep their window means, only noisier
    x, xt = derive(raw), derive(thin)
    for f in (1, 2, 3):     # success_rel, failed_rel, retrans_rel
        assert abs(xt[..., f].mean() - x[..., f].mean()) < 0.03 + 0.05 * abs(x[..., f].mean())
    np.testing.assert_array_equal(thin_windows(np.random.default_rng(0), raw, np.ones(len(raw))), raw)


# ------------------------------------------------------------------------------------ outlier exposure


def toy_windows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of (N, T, F) windows: class 0 around 1.0 in every feature, class 1 around 3.0,
    feature 2 much more spread in class 1."""
    rng = np.random.default_rng(seed)
    a = 1.0 + 0.05 * rng.standard_normal((40, 30, 3))
    b = 3.0 + 0.05 * rng.standard_normal((40, 30, 3)) + np.array([0, 0, 1.0]) * rng.standard_normal((40, 1, 1))
    return np.concatenate([a, b]).astype(np.float32), np.array([0] * 40 + [1] * 40)


def test_outlier_scales_are_per_class_spreads_with_a_floor() -> None:
    x, ids = toy_windows()
    sc = outlier_scales(x, ids, floor_share=0.25)
    floor = 0.25 * x.reshape(-1, 3).std(axis=0)
    assert sc.shape == (2, 3)
    np.testing.assert_allclose(sc[0], floor, rtol=1e-5)               # class 0 is tight: the floor
    assert sc[1, 2] > 2 * floor[2] and sc[1, 2] == pytest.approx(x[40:, :, 2].mean(axis=1).std(), rel=1e-5)


def test_synthetic_outliers_shift_one_or_two_features_far_but_never_below_the_floor() -> None:
    x, ids = toy_windows()
    sc = outlier_scales(x, ids)
    floor = x.min(axis=(0, 1))
    rng = np.random.default_rng(1)
    out = synthetic_outliers(rng, x, ids, 300, sc, (3.0, 8.0), floor)
    assert out.shape == (300, 30, 3) and out.dtype == np.float32
    assert np.all(out >= floor - 1e-6)
    # every outlier is its base window with 1-2 features moved by >= 3 class spreads over >= 10 steps
    rng = np.random.default_rng(1)
    base = x[rng.integers(len(x), size=300)]
    moved = np.abs(out - base) > 1e-6                                   # (n, T, F)
    n_feats = moved.any(axis=1).sum(axis=1)
    assert set(n_feats.tolist()) <= {1, 2} and {1, 2} <= set(n_feats.tolist())
    assert np.all(moved.sum(axis=1).max(axis=1) >= 10)
    step = np.abs(out - base).max(axis=1)                               # (n, F)
    assert np.all(step[moved.any(axis=1)] >= 3 * sc.min(axis=0)[np.nonzero(moved.any(axis=1))[1]] - 1e-4)
    assert (out > base + 1e-6).any() and (out < base - 1e-6).any()      # both directions occur


def test_exposure_batches_make_outliers_negatives_of_every_class_only() -> None:
    x, ids = toy_windows()
    exp = Exposure(x, ids, k=6, n_out=4, lo_hi=(3.0, 8.0))
    bx, y = exp.batch(np.random.default_rng(2), x, ids)
    assert bx.shape == (16, 30, 3) and y.shape == (16, 3)
    lab, pos, neg = y[:, 0].astype(int), y[:, 1].astype(int), y[:, 2].astype(int)
    known, out = np.arange(12), np.arange(12, 16)
    assert sorted(lab[known].tolist()) == [0] * 6 + [1] * 6
    assert lab[out].tolist() == [2, 3, 4, 5]                          # one label each: no positive
    assert np.all(pos[out] == out) and np.all(neg[out] < 12)            # pushed away from a known row
    assert np.all(lab[pos[known]] == lab[known]) and np.all(pos[known] != known)
    assert np.all(lab[neg[known]] != lab[known])
    vx, vy = exp.fixed(np.random.default_rng(3), x, ids, 3)
    assert vx.shape == (48, 30, 3) and vy.shape == (48, 3)
    again = exp.fixed(np.random.default_rng(3), x, ids, 3)
    np.testing.assert_array_equal(vx, again[0])


def test_training_needs_two_classes(tmp_path: Path) -> None:
    trace, labels = sim_files(tmp_path, "calm", 2, 8, seed=1, params=SimParams(faults=()))
    with pytest.raises(NetsiamError, match="at least two classes"):
        train(Config(), [trace], [labels], tmp_path / "out", quiet=True)


def test_excluding_every_fault_leaves_one_class(data: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    trace, labels = data["train"]
    with pytest.raises(NetsiamError, match="at least two classes"):
        train(Config(), [trace], [labels], tmp_path / "out", exclude_labels=["blocked", "capacity_limit"], quiet=True)


@pytest.mark.parametrize("verdict", ["unknown", "silent"])
def test_the_detectors_verdicts_are_not_training_labels(data: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                         verdict: str) -> None:
    trace, labels = data["train"]
    rows = labels.read_text().splitlines()
    renamed = tmp_path / "draft.csv"   # a `netsiam dump --labels` draft with one episode left as the daemon saw it
    renamed.write_text("\n".join([*rows[:2], rows[2].rsplit(",", 1)[0] + f",{verdict}", *rows[3:]]) + "\n")
    with pytest.raises(NetsiamError, match=f"label\\(s\\) {verdict}: the detector's verdicts"):
        train(Config(), [trace], [renamed], tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_cli_train_missing_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "netsiam", "train", "--data", str(tmp_path / "missing.jsonl"),
                           "--labels", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "missing.jsonl" in lines[0] and "not found" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_train_never_writes_over_the_shipped_model(tmp_path: Path) -> None:
    from netsiam.serving import default_model_path

    shipped = default_model_path()
    before = (shipped / "manifest.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "netsiam", "train", "--data", str(tmp_path / "t.jsonl"),
                           "--labels", str(tmp_path / "l.csv"), "-o", str(shipped)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is the model shipped in the package" in proc.stderr.strip().splitlines()[-1]
    assert (shipped / "manifest.json").read_bytes() == before


def test_cli_train_refuses_zero_candidates_in_one_line(data: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    trace, labels = data["train"]
    proc = subprocess.run([sys.executable, "-m", "netsiam", "train", "--data", str(trace), "--labels", str(labels),
                           "-o", str(tmp_path / "out"), "--candidates", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr   # a usage error, argparse's
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "argument --candidates: must be >= 1" in errors[0], proc.stderr


# ------------------------------------------------------------------------------------ end to end


def test_train_end_to_end_separates_faults_on_held_out_data(data: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    trace, labels = data["train"]
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("training:\n  steps_per_epoch: 15\n  batch_per_class: 12\n  patience: 3\n")
    out = tmp_path / "model"
    assert main(["train", "--config", str(cfg_file), "--data", str(trace), "--labels", str(labels), "-o", str(out),
                 "--epochs", "3", "--seed", "5", "--exclude-label", "retrans_storm"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert sum(line.startswith("epoch ") for line in captured.err.splitlines()) >= 1

    art = load_artifact(out)
    m = art.manifest
    assert art.prototypes.classes == ["normal", "blocked", "capacity_limit"] == m["classes"]
    assert m["format"] == 1 and m["training"]["epochs"] == 3 and m["training"]["seed"] == 5
    assert m["window"] == {"interval_s": 1.0, "length": 30, "stride": 1, "max_gap": 5}
    assert m["model"]["window_length"] == 30 and m["model"]["n_features"] == len(DEFAULT_FEATURES)
    assert len(m["normalisation"]["mean"]) == len(m["normalisation"]["std"]) == len(DEFAULT_FEATURES)
    assert m["config"]["training"]["steps_per_epoch"] == 15 and m["excluded_labels"] == ["retrans_storm"]
    assert len(m["history"]["loss"]) == len(m["history"]["val_loss"]) == m["metrics"]["epochs_run"]
    assert orjson.loads((out / "history.json").read_bytes()) == m["history"]
    assert m["metrics"]["val_n_way_accuracy"] > 0.9
    # the evidence ranges (every feature) and each fault's signature (only rises above a range), from the
    # training windows, as --ranges-only recomputes them
    assert list(m["normal_ranges"]) == m["features"]
    sigs, marks = m[SIGNATURE_KEY], m[MARK_KEY]
    assert training_evidence(Config(), [trace], [labels], ["retrans_storm"]) == {
        "normal_ranges": m["normal_ranges"], SIGNATURE_KEY: sigs, MARK_KEY: marks}
    assert set(sigs) <= {"blocked", "capacity_limit"} and all(
        f in m["features"] and side == "above" for s in sigs.values() for f, side in s.items())
    # a mark is a signature input no other fault shows: each fault's marks are some of its signature
    assert all(set(mk) <= set(sigs[c]) for c, mk in marks.items())

    with np.load(out / "snapshots.npz", allow_pickle=False) as z:
        emb, lab, epochs = z["emb"], z["labels"], z["epochs"]
    assert emb.shape[0] == m["metrics"]["epochs_run"] + 1 and emb.shape[2] == 3     # + the untrained encoder
    assert lab.shape == (emb.shape[1],) and lab.dtype.kind == "U" and epochs.tolist() == list(range(emb.shape[0]))
    assert set(lab.tolist()) == set(m["classes"])
    events = list((out / "logs" / "validation").glob("events.out.tfevents.*"))
    assert events and b"epoch_n_way_acc" in events[0].read_bytes()
    assert (out / "checkpoint.weights.h5").is_file()

    # held-out data from another seed: blocked vs normal must separate
    test_trace, test_labels = data["test"]
    lw = build_windows([test_trace], [test_labels], Config())
    keep = ~lw.straddle & np.isin(lw.labels, ["normal", "blocked"])
    emb_t = art.embed(lw.x[keep])
    names, _, dist = art.prototypes.classify(emb_t)
    nearest = np.asarray(art.prototypes.classes, dtype=object)[dist.argmin(axis=1)]
    truth = lw.labels[keep]
    assert (truth == "blocked").sum() >= 10
    assert np.mean(nearest == truth) > 0.95
    assert _pair_auc(emb_t.astype(np.float64), truth) > 0.98
    assert np.mean(names[truth == "blocked"] == "blocked") > 0.9


def test_training_is_deterministic_given_a_seed(data: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    trace, labels = data["train"]
    cfg = override(Config(), {"training.steps_per_epoch": 6, "training.batch_per_class": 8})
    a = train(cfg, [trace], [labels], tmp_path / "a", epochs=2, seed=11, quiet=True)
    b = train(cfg, [trace], [labels], tmp_path / "b", epochs=2, seed=11, quiet=True, exclude_labels=["retrans_storm"])
    for wa, wb in zip(a.encoder.get_weights(), b.encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert a.manifest["history"] == b.manifest["history"]
    assert a.manifest["version"].split("-")[1] == b.manifest["version"].split("-")[1]   # same weights hash
    assert a.prototypes.to_json() == b.prototypes.to_json()
    c = train(cfg, [trace], [labels], tmp_path / "c", epochs=2, seed=12, quiet=True)
    assert a.manifest["version"].split("-")[1] != c.manifest["version"].split("-")[1]


def test_lossless_variant_trains_and_is_recorded(data: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    trace, labels = data["train"]
    cfg = override(Config(), {"training.steps_per_epoch": 5, "training.batch_per_class": 8, "training.loss": "lossless"})
    art = train(cfg, [trace], [labels], tmp_path / "m", epochs=1, quiet=True, logdir=tmp_path / "tb")
    assert art.manifest["training"]["loss"] == "lossless" and art.manifest["history"]["loss"][0] > 0
    assert list((tmp_path / "tb" / "train").glob("events.out.tfevents.*"))
    assert load_artifact(tmp_path / "m").prototypes.classes == art.prototypes.classes


def test_aftermath_marks_the_normal_windows_right_after_a_fault() -> None:
    end_ts, labels = _timeline([("normal", 10), ("blocked", 5), ("normal", 50)])
    groups = np.full(len(end_ts), "0:a", dtype=object)
    after = in_aftermath(end_ts, groups, labels, 35.0)
    assert np.flatnonzero(after).tolist() == list(range(15, 50))     # 35 s after the last blocked window
    other = np.full(len(end_ts), "1:b", dtype=object)
    assert not in_aftermath(end_ts, other, np.full(len(end_ts), "normal", dtype=object), 35.0).any()


def test_the_aftermath_of_back_to_back_faults_is_the_latest_ones() -> None:
    """A limit 5 s after a freeze: the normal windows between them are the freeze's aftermath, those after
    the limit the limit's (a fault's signature is what stops in its own aftermath)."""
    end_ts, labels = _timeline([("normal", 10), ("blocked", 5), ("normal", 5), ("capacity_limit", 5), ("normal", 50)])
    after = aftermath_of(end_ts, np.full(len(end_ts), "0:a", dtype=object), labels, 35.0)
    assert after[:15].tolist() == [""] * 15
    assert after[15:20].tolist() == ["blocked"] * 5 and after[20:25].tolist() == [""] * 5
    assert after[25:60].tolist() == ["capacity_limit"] * 35 and not after[60:].any()


@pytest.mark.slow
def test_one_real_recording_with_its_faults_early_trains(tmp_path: Path) -> None:
    """A single 9-minute real SIPp recording whose faults all fall in its first half (validation is
    chosen per class, not the wall-clock tail), a 40-second one that is too short for a class (one
    line naming each class's windows), and a real recording with SIPp's int64 sentinels."""
    from netsiam.importers.sipp import import_sipp
    from netsiam.trainer.corpus import load_corpus

    rec = next(r for r in load_corpus() if r.name == "r15_h2")
    trace = tmp_path / "r.jsonl"
    write_trace(trace, [r for r in import_sipp([rec.stat], rec.source)])
    cfg = override(Config(), {"training.epochs": 1, "training.steps_per_epoch": 3})
    art = train(cfg, [trace], [rec.labels], tmp_path / "m", quiet=True)
    assert art.prototypes.classes == ["normal", "blocked", "capacity_limit"]
    assert art.manifest["validation_overlaps_training"] == []

    data = Path(__file__).parent / "data"
    small = tmp_path / "small.jsonl"
    write_trace(small, import_sipp([data / "sipp_small_stat.csv"], "127.0.0.1:25360"))
    with pytest.raises(NetsiamError, match=r"blocked has 0 training and 0 validation windows"):
        train(cfg, [small], [data / "sipp_small_labels.csv"], tmp_path / "s", quiet=True)


@pytest.mark.parametrize("side_by_side", [True, False], ids=["side_by_side", "in_turn"])
def test_candidates_train_one_seed_each_and_keep_the_best_probe(data: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, side_by_side: bool) -> None:
    trace, labels = data["train"]
    cfg = override(Config(), {"training.steps_per_epoch": 6, "training.batch_per_class": 8})
    # in worker processes whatever this machine's cores (or one after another in this process): the single
    # training below, in this process, must give the same weights either way
    monkeypatch.setattr(train_module, "workers_for", lambda n: n if side_by_side else 1)
    art = train(override(cfg, {"training.candidates": 2}), [trace], [labels], tmp_path / "m", epochs=2, seed=11,
                quiet=True)
    table = art.manifest["candidates"]
    assert [r["seed"] for r in table] == [11, 12] and sum(r["chosen"] for r in table) == 1
    chosen = next(r for r in table if r["chosen"])
    assert chosen == {**pick_candidate(table), "chosen": True}
    assert art.manifest["training"]["seed"] == chosen["seed"] and art.manifest["version"] == chosen["version"]
    for r in table:       # each candidate is the model one training with its seed gives (a benchmark reuses them)
        cand = load_artifact(tmp_path / "m" / "candidates" / f"seed-{r['seed']}")
        assert cand.manifest["metrics"]["shift_probe"]["score"] == r["shift_probe"]
        assert cand.manifest["version"] == r["version"]
    single = train(cfg, [trace], [labels], tmp_path / "one", epochs=2, seed=12, quiet=True)
    assert single.manifest["version"].split("-")[1] == table[1]["version"].split("-")[1]
    for wa, wb in zip(art.encoder.get_weights(), load_artifact(tmp_path / "m" / "candidates" / f"seed-{chosen['seed']}")
                      .encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    probe = art.manifest["metrics"]["shift_probe"]
    assert 0.0 <= probe["score"] <= 1.0 and probe["windows"] > 0 and "log_response_ms" in probe["per_input"]
    # the probe recomputed from the data alone (for models trained before it existed) gives the same score
    assert probe_artifact(art, cfg, [trace], [labels])["score"] == probe["score"]


def test_candidates_refuse_too_few_windows_before_any_worker_starts(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates side by side: data too short for a class is refused with the single training's one line,
    before a worker process (and its TensorFlow) starts."""
    from netsiam.importers.sipp import import_sipp

    def no_workers(*_a: object) -> None:
        raise AssertionError("a worker started")

    monkeypatch.setattr(train_module, "workers_for", lambda n: n)
    monkeypatch.setattr(train_module, "side_by_side", no_workers)
    data = Path(__file__).parent / "data"
    small = tmp_path / "small.jsonl"
    write_trace(small, import_sipp([data / "sipp_small_stat.csv"], "127.0.0.1:25360"))
    cfg = override(Config(), {"training.epochs": 1, "training.steps_per_epoch": 3, "training.candidates": 2})
    with pytest.raises(NetsiamError, match=r"blocked has 0 training and 0 validation windows"):
        train(cfg, [small], [data / "sipp_small_labels.csv"], tmp_path / "s", quiet=True)


def test_pick_candidate_prefers_the_probe_then_the_validation_loss() -> None:
    rows = [{"seed": 0, "shift_probe": 0.5, "val_loss": 0.01}, {"seed": 1, "shift_probe": 0.7, "val_loss": 0.09},
            {"seed": 2, "shift_probe": 0.7, "val_loss": 0.05}, {"seed": 3, "shift_probe": None, "val_loss": 0.0}]
    assert pick_candidate(rows)["seed"] == 2
    assert pick_candidate([rows[3], {"seed": 4, "shift_probe": None, "val_loss": 0.2}])["seed"] == 3


class _ReadsOneInput:
    """An 'artifact' whose embedding moves only with input 0's mean: unknown beyond 1.0 of it."""

    class prototypes:  # noqa: N801 - mimics Artifact.prototypes
        @staticmethod
        def classify(emb: np.ndarray) -> tuple[np.ndarray, None, None]:
            return np.where(emb[:, 0] > 1.0, "unknown", "normal").astype(object), None, None

    @staticmethod
    def embed(x: np.ndarray) -> np.ndarray:
        return x[:, :, :1].mean(axis=1)


def test_the_shift_probe_scores_only_the_inputs_an_encoder_reads() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.1, size=(500, 30, 3)).astype(np.float32)
    x[:, :, 2] = 1.0                                           # constant: no spread, not probed
    spreads = probe_spreads(x)
    assert spreads[2] == 0.0 and spreads[0] > 0
    res = shift_probe(_ReadsOneInput(), x, spreads, ["a", "b", "c"], shifts=(200.0,), onsets=(None,))
    assert res["per_input"] == {"a": 1.0, "b": 0.0} and res["score"] == 0.5 and res["windows"] == 400
    assert shift_probe(_ReadsOneInput(), x[:0], spreads, ["a", "b", "c"])["score"] is None
    # no clean normal training window to measure a spread on: nothing is probed, no score (not 0)
    assert shift_probe(_ReadsOneInput(), x, probe_spreads(x[:1]), ["a", "b", "c"])["score"] is None
