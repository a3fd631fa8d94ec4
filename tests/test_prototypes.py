"""Prototypes: fitting methods, thresholds, unknown, add-class without retraining, the CLI verbs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import lstm_encoder, manifest, prototypes_at, small_artifact

from netsiam.cli import main
from netsiam.config import PrototypeConfig, WindowConfig
from netsiam.errors import EXIT_DATA, EXIT_USAGE, NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.givens import debounce_view
from netsiam.schemas.classes import KNOWN_LABELS, SILENT, UNKNOWN
from netsiam.serving import Prototypes, load_artifact, trained_classes
from netsiam.traceio import LabelInterval, Record, write_labels, write_trace
from netsiam.trainer.prototypes import (
    add_class,
    calibrate_thresholds,
    class_points,
    class_threshold,
    fit_prototypes,
    format_table,
)

NO_FLOOR = PrototypeConfig(min_threshold=0.0)


def blob(centre: tuple[float, float, float], n: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.asarray(centre) + rng.normal(0, spread, (n, 3)), 0, 1)


# ------------------------------------------------------------------------------------ fitting


def test_median_mean_medoid_on_hand_made_points() -> None:
    pts = np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [1, 1, 1]], dtype=np.float64)
    np.testing.assert_allclose(class_points(pts, "median"), [[0.15, 0, 0]])
    np.testing.assert_allclose(class_points(pts, "mean"), [[0.325, 0.25, 0.25]])
    np.testing.assert_allclose(class_points(pts, "medoid"), [[0.1, 0, 0]])   # the outlier cannot be it
    with pytest.raises(ValueError, match="unknown prototype method"):
        class_points(pts, "mode")


def test_median_resists_an_outlier_the_mean_does_not() -> None:
    pts = np.vstack([blob((0.2, 0.2, 0.2), 50, 0.01, 0), [[1.0, 1.0, 1.0]] * 5])
    assert np.abs(class_points(pts, "median") - 0.2).max() < 0.02
    assert np.abs(class_points(pts, "mean") - 0.2).max() > 0.05


def test_kmeans_finds_both_modes_of_a_class_deterministically() -> None:
    pts = np.vstack([blob((0.1, 0.1, 0.9), 40, 0.02, 1), blob((0.9, 0.1, 0.9), 40, 0.02, 2)])
    a = class_points(pts, "kmeans", per_class=2, seed=3)
    b = class_points(pts, "kmeans", per_class=2, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 3)
    assert sorted(np.round(a[:, 0], 1).tolist()) == [0.1, 0.9]
    # with k = 2 both modes are close to a prototype point; one median point sits between them
    protos_k = fit_prototypes(pts, np.array(["x"] * 80, dtype=object), PrototypeConfig(method="kmeans", per_class=2))
    protos_m = fit_prototypes(pts, np.array(["x"] * 80, dtype=object), PrototypeConfig())
    assert protos_k.distances(pts).max() < 0.1 < protos_m.distances(pts).min()
    # fewer distinct points than k: as many prototypes as there are points
    assert class_points(np.array([[0.5, 0.5, 0.5]] * 3), "kmeans", per_class=4).shape == (1, 3)


def test_fit_prototypes_per_class_support_and_order() -> None:
    emb = np.vstack([blob((0.1, 0.1, 0.1), 30, 0.02, 0), blob((0.9, 0.9, 0.1), 20, 0.02, 1)])
    labels = np.array(["normal"] * 30 + ["blocked"] * 20, dtype=object)
    protos = fit_prototypes(emb, labels, PrototypeConfig(), classes=["normal", "blocked"])
    assert protos.classes == ["normal", "blocked"] and protos.support == [30, 20]
    assert protos.method == "median"
    with pytest.raises(NetsiamError, match="no windows"):
        fit_prototypes(emb, labels, PrototypeConfig(), classes=["normal", "capacity_limit"])


# ------------------------------------------------------------------------------------ thresholds


def test_threshold_is_quantile_times_scale_with_a_floor() -> None:
    d = np.linspace(0.0, 0.1, 101)
    pcfg = PrototypeConfig(threshold_quantile=0.9, threshold_scale=2.0, min_threshold=0.0)
    assert class_threshold(d, pcfg) == pytest.approx(0.18)
    assert class_threshold(d, PrototypeConfig(threshold_quantile=0.9, threshold_scale=2.0,
                                              min_threshold=0.5)) == pytest.approx(0.5)
    assert class_threshold(np.zeros(0), pcfg) == 0.0


def test_calibration_uses_held_out_windows_and_keeps_classes_without_enough() -> None:
    train = np.vstack([blob((0.1, 0.1, 0.1), 40, 0.01, 0), blob((0.9, 0.9, 0.9), 40, 0.01, 1)])
    labels = np.array(["a"] * 40 + ["b"] * 40, dtype=object)
    protos = fit_prototypes(train, labels, NO_FLOOR)
    before = list(protos.thresholds)
    held_out = np.vstack([blob((0.1, 0.1, 0.1), 30, 0.05, 2), blob((0.9, 0.9, 0.9), 3, 0.05, 3)])
    used = calibrate_thresholds(protos, held_out, np.array(["a"] * 30 + ["b"] * 3, dtype=object), NO_FLOOR)
    assert used == {"a": 30, "b": 0}
    assert protos.thresholds[0] > 2 * before[0]          # wider held-out spread -> wider threshold
    assert protos.thresholds[1] == before[1]             # 3 < min_support windows: unchanged
    d = protos.distances(held_out[:30])[:, 0]
    assert protos.thresholds[0] == pytest.approx(np.quantile(d, 0.99) * 1.25)


def test_windows_beyond_every_threshold_are_unknown() -> None:
    emb = np.vstack([blob((0.1, 0.1, 0.1), 50, 0.02, 0), blob((0.9, 0.1, 0.1), 50, 0.02, 1)])
    labels = np.array(["normal"] * 50 + ["blocked"] * 50, dtype=object)
    protos = fit_prototypes(emb, labels, PrototypeConfig())
    names, dist, _ = protos.classify(np.array([[0.1, 0.1, 0.1], [0.9, 0.1, 0.1], [0.5, 0.9, 0.9], [0.12, 0.1, 0.1]]))
    assert names.tolist() == ["normal", "blocked", UNKNOWN, "normal"]
    assert dist[2] > max(protos.thresholds)


# ------------------------------------------------------------------------------------ add a class


class StubArtifact:
    """An artifact whose 'encoder' reads the embedding from the window's last row (exact and instant)."""

    def __init__(self, protos: Prototypes) -> None:
        self.prototypes = protos

    def embed(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)[:, -1, :3]


def windows_at(emb: np.ndarray, t: int = 4) -> np.ndarray:
    return np.repeat(np.asarray(emb, np.float32)[:, None, :], t, axis=1)   # (N, T, 3)


def known_protos() -> Prototypes:
    emb = np.vstack([blob((0.1, 0.1, 0.1), 60, 0.02, 0), blob((0.9, 0.1, 0.1), 60, 0.03, 1),
                     blob((0.1, 0.9, 0.1), 60, 0.04, 2)])
    labels = np.array(["normal"] * 60 + ["blocked"] * 60 + ["capacity_limit"] * 60, dtype=object)
    return fit_prototypes(emb, labels, NO_FLOOR, classes=["normal", "blocked", "capacity_limit"])


def test_add_class_then_classify_without_retraining() -> None:
    art = StubArtifact(known_protos())
    new = blob((0.2, 0.2, 0.9), 5, 0.01, 7)
    thr = add_class(art, "retrans_storm", windows_at(new), NO_FLOOR)   # type: ignore[arg-type]
    protos = art.prototypes
    assert protos.classes[-1] == "retrans_storm" and protos.support[-1] == 5
    # 5 tight windows alone would give a tiny threshold; the floor is the median of the others
    assert thr == pytest.approx(float(np.median(protos.thresholds[:3])))
    later = blob((0.2, 0.2, 0.9), 40, 0.01, 8)
    names, _, _ = protos.classify(later)
    assert (names == "retrans_storm").mean() > 0.95
    assert protos.classify(np.array([[0.9, 0.9, 0.9]]))[0][0] == UNKNOWN


def test_the_debounce_is_told_the_trained_class_nearest_an_added_one() -> None:
    """What the debounce is given: which windows are of a class added after training and, with ``added_grace_s``
    on, as their nearest class the nearest of the classes the encoder was trained on (``manifest["classes"]``)."""
    from netsiam.config import DebounceConfig

    protos = prototypes_at({"normal": [[0.5, 0.5, 0.5]], "blocked": [[0.9, 0.1, 0.1]], "degraded": [[0.6, 0.6, 0.6]]})
    art = small_artifact(None, protos, manifest(classes=["normal", "blocked", "capacity_limit"]))
    emb = np.array([[0.62, 0.6, 0.6], [0.85, 0.15, 0.1]])
    dist = protos.distances(emb)
    assert trained_classes(protos, art.manifest) == ("normal", "blocked")   # capacity_limit was removed since
    assert list(protos.nearest(dist)) == ["degraded", "blocked"]
    names = protos.classify(emb)[0]
    nearest, added = debounce_view(art, names, dist, DebounceConfig(added_grace_s=65.0))
    assert list(nearest) == ["normal", "blocked"] and added is not None and list(added) == [True, False]
    # the grace off: the nearest of every class, and still which windows are added (a mark never renames them)
    nearest, added = debounce_view(art, names, dist, DebounceConfig(added_grace_s=0.0))
    assert list(nearest) == ["degraded", "blocked"] and added is not None and list(added) == [True, False]
    # a manifest without the list: every class counts as trained, none as added
    assert trained_classes(protos, manifest()) == ("normal", "blocked", "degraded")
    assert debounce_view(small_artifact(None, protos, manifest()), names, dist, DebounceConfig())[1] is None


def test_add_class_threshold_from_a_wide_support_set() -> None:
    art = StubArtifact(known_protos())
    wide = blob((0.5, 0.5, 0.9), 40, 0.15, 9)
    thr = add_class(art, "wide", windows_at(wide), NO_FLOOR)   # type: ignore[arg-type]
    d = art.prototypes.distances(wide)[:, -1]
    assert thr == pytest.approx(np.quantile(d, 0.99) * 1.25)
    assert thr > max(art.prototypes.thresholds[:3])


def test_add_class_replaces_an_existing_class() -> None:
    art = StubArtifact(known_protos())
    add_class(art, "blocked", windows_at(blob((0.9, 0.9, 0.1), 6, 0.01, 4)), NO_FLOOR)   # type: ignore[arg-type]
    assert art.prototypes.classes == ["normal", "blocked", "capacity_limit"]
    assert art.prototypes.support[1] == 6
    np.testing.assert_allclose(art.prototypes.points[1], [[0.9, 0.9, 0.1]], atol=0.02)


def test_add_class_kmeans_gives_each_point_min_support_windows() -> None:
    art = StubArtifact(known_protos())
    two_modes = np.vstack([blob((0.2, 0.2, 0.9), 6, 0.01, 1), blob((0.9, 0.9, 0.9), 6, 0.01, 2)])
    pcfg = PrototypeConfig(method="kmeans", per_class=4)
    add_class(art, "bimodal", windows_at(two_modes), pcfg)   # type: ignore[arg-type]
    assert art.prototypes.points[-1].shape == (2, 3)          # 12 windows // min_support 5 = 2 points, not 4
    add_class(art, "few", windows_at(two_modes[:9]), pcfg)    # type: ignore[arg-type]
    assert art.prototypes.points[-1].shape == (1, 3)


def test_add_class_refuses_too_few_examples_and_reserved_names() -> None:
    art = StubArtifact(known_protos())
    with pytest.raises(NetsiamError, match="need at least 5"):
        add_class(art, "x", windows_at(blob((0.5, 0.5, 0.5), 4, 0.01, 0)))   # type: ignore[arg-type]
    for verdict in (UNKNOWN, SILENT):
        with pytest.raises(NetsiamError, match="reserved"):
            add_class(art, verdict, windows_at(blob((0.5, 0.5, 0.5), 9, 0.01, 0)))   # type: ignore[arg-type]
    assert art.prototypes.classes == ["normal", "blocked", "capacity_limit"]


def test_format_table_lists_every_class() -> None:
    text = format_table(known_protos())
    lines = text.splitlines()
    assert lines[0].split() == ["class", "points", "threshold", "support"]
    assert [ln.split()[0] for ln in lines[1:]] == ["normal", "blocked", "capacity_limit"]
    assert lines[2].split()[1] == "1" and lines[2].split()[3] == "60"


# ------------------------------------------------------------------------------------ CLI

T = 30


def lstm_artifact(path: Path) -> Path:
    protos = prototypes_at({name: np.full(3, 0.2 + 0.3 * i) for i, name in enumerate(KNOWN_LABELS)}, 0.1, 100)
    small_artifact(lstm_encoder(T, units=8, seed=1), protos, manifest(length=T, stride=5), path)
    return path


def write_small_trace(tmp: Path, label: str = "congestion", seconds: int = 300) -> tuple[Path, Path]:
    """One source; ``label`` covers [100, 260) s: about two dozen non-straddling windows."""
    t0 = 1_800_000_000.0
    recs = []
    for s in range(seconds):
        bad = 100 <= s < 260
        m = {name: 0.0 for name in RAW_METRICS}
        m.update(OutgoingCall=20.0 + s % 3, SuccessfulCall=5.0 if bad else 19.0, FailedCall=15.0 if bad else 1.0,
                 Retransmissions=4.0 if bad else 0.0, CurrentCall=200.0, ResponseTime1=40.0 if bad else 5.0)
        recs.append(Record("sbc-1", t0 + s, m))
    trace, labels = tmp / "t.jsonl", tmp / "l.csv"
    write_trace(trace, recs)
    write_labels(labels, [LabelInterval("sbc-1", t0 + 100, t0 + 260, label)])
    return trace, labels


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return lstm_artifact(tmp_path / "model")


def test_cli_list_add_remove(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, labels = write_small_trace(tmp_path)
    assert main(["prototypes", "list", "--model", str(model_dir)]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]] == ["normal", "blocked", "capacity_limit"]
    trained = load_artifact(model_dir).version

    assert main(["prototypes", "add", "--model", str(model_dir), "--name", "congestion",
                 "--data", str(trace), "--labels", str(labels)]) == 0
    assert "added 'congestion'" in capsys.readouterr().out
    art = load_artifact(model_dir)                       # hashes in the manifest were updated too
    assert art.prototypes.classes[-1] == "congestion"
    n_all = art.prototypes.support[-1]
    assert n_all >= 20

    assert main(["prototypes", "add", "--model", str(model_dir), "--name", "storm", "--label", "congestion",
                 "--data", str(trace), "--labels", str(labels), "--max-examples", "6"]) == 0
    art = load_artifact(model_dir)
    assert art.prototypes.classes[-1] == "storm" and art.prototypes.support[-1] == 6

    assert main(["prototypes", "remove", "--model", str(model_dir), "--name", "congestion"]) == 0
    assert load_artifact(model_dir).prototypes.classes == ["normal", "blocked", "capacity_limit", "storm"]

    # every change kept a version, as feedback does: the model as trained is one rollback away
    capsys.readouterr()
    assert main(["model", "history", "--model", str(model_dir)]) == 0
    text = capsys.readouterr().out
    assert [ln.split()[0] for ln in text.splitlines()].count("*") == 1 and len(text.splitlines()) == 4, text
    assert "prototypes add congestion" in text and "prototypes remove congestion" in text, text
    assert main(["model", "rollback", trained, "--model", str(model_dir)]) == 0
    assert load_artifact(model_dir).prototypes.classes == ["normal", "blocked", "capacity_limit"]


def test_cli_errors_are_one_line_and_leave_the_artifact_alone(model_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    trace, labels = write_small_trace(tmp_path)
    before = (model_dir / "prototypes.json").read_bytes()
    cases = [
        (["remove", "--model", str(model_dir), "--name", "nope"], "no class 'nope'"),
        (["add", "--model", str(model_dir), "--name", "x", "--data", str(trace), "--labels", str(labels)],
         "0 window(s) labelled 'x'"),
        (["add", "--model", str(model_dir), "--name", "c", "--label", "congestion", "--max-examples", "3",
          "--data", str(trace), "--labels", str(labels)], "need at least 5"),
        (["add", "--model", str(model_dir), "--name", "c", "--data", str(tmp_path / "missing.jsonl"),
          "--labels", str(labels)], "not found"),
        (["list", "--model", str(tmp_path / "no-model")], "not found"),
        # the name alone is wrong: said before any window is read (the labels name no 'silent' either)
        (["add", "--model", str(model_dir), "--name", "silent", "--data", str(trace), "--labels", str(labels)],
         "'silent' is reserved"),
        *[(["add", "--model", str(model_dir), "--name", bad, "--data", str(trace), "--labels", str(labels)],
           f"bad class name {bad!r}") for bad in ("bad name", "日本", "x" * 65, "congestion\n")],
    ]
    for argv, message in cases:
        assert main(["prototypes", *argv]) == EXIT_DATA
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (model_dir / "prototypes.json").read_bytes() == before


def test_cli_changes_detector_model_by_default_and_never_the_shipped_model(
        model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As ``feedback`` does: add/remove change --model, else detector.model, never the model shipped in the
    package (a usage error naming ``model copy``); list reads --model, else detector.model, else the shipped one."""
    from netsiam.serving import default_model_path

    shipped = default_model_path()
    before = (shipped / "prototypes.json").read_bytes()
    trace, labels = write_small_trace(tmp_path)
    for argv in (["remove", "--model", str(shipped), "--name", "blocked"],
                 ["add", "--model", str(shipped), "--name", "congestion", "--data", str(trace), "--labels", str(labels)]):
        assert main(["prototypes", *argv]) == EXIT_USAGE
        assert "`netsiam model copy DIR`" in capsys.readouterr().err
    assert main(["prototypes", "remove", "--name", "blocked"]) == EXIT_USAGE     # no --model, no detector.model
    assert "no model to change" in capsys.readouterr().err
    assert (shipped / "prototypes.json").read_bytes() == before
    assert main(["prototypes", "list"]) == 0
    listed = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert listed == load_artifact(shipped).prototypes.classes
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"detector:\n  model: {model_dir}\n")
    assert main(["prototypes", "remove", "--config", str(cfg), "--name", "blocked"]) == 0
    assert load_artifact(model_dir).prototypes.classes == ["normal", "capacity_limit"]
    capsys.readouterr()
    assert main(["prototypes", "list", "--config", str(cfg)]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]] == ["normal", "capacity_limit"]


def test_cli_refuses_to_remove_normal_or_the_last_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without ``normal`` every window would be a fault or unknown (an evaluate of it reads as perfect)."""
    d = lstm_artifact(tmp_path / "m")
    assert main(["prototypes", "remove", "--model", str(d), "--name", "normal"]) == EXIT_USAGE
    assert "'normal' cannot be removed" in capsys.readouterr().err
    for name in ("blocked", "capacity_limit"):
        assert main(["prototypes", "remove", "--model", str(d), "--name", name]) == 0
    assert main(["prototypes", "remove", "--model", str(d), "--name", "normal"]) == EXIT_DATA
    assert "only class" in capsys.readouterr().err
    assert orjson.loads((d / "prototypes.json").read_bytes())["classes"].keys() == {"normal"}


def test_cli_add_windows_with_the_models_window_settings(tmp_path: Path) -> None:
    """The config's window length differs from the model's: the model's settings must be used."""
    d = lstm_artifact(tmp_path / "m")
    trace, labels = write_small_trace(tmp_path)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("window:\n  length: 12\n")
    assert main(["prototypes", "add", "--config", str(cfg_file), "--model", str(d), "--name", "congestion",
                 "--data", str(trace), "--labels", str(labels)]) == 0
    assert load_artifact(d).window == WindowConfig(length=T, stride=5)
