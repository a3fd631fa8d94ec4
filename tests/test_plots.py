"""Plots and the training animation write real, non-empty image files; bad inputs fail cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import MeanEncoder, lstm_encoder, manifest, prototypes_at, small_artifact

from netsiam.cli import main
from netsiam.config import Config, WindowConfig
from netsiam.errors import EXIT_DATA, EXIT_RUNTIME, EXIT_USAGE, NetsiamError, UsageError
from netsiam.features import RAW_METRICS
from netsiam.traceio import LabelInterval, write_labels, write_trace
from netsiam.trainer.dataset import LabelledWindows
from netsiam.trainer.evaluate import Evaluation, evaluate_detailed
from netsiam.trainer.plots import PLOT_FILES, animate_snapshots, plot_history, write_plots

PNG, GIF = b"\x89PNG\r\n\x1a\n", b"GIF8"
T = 4
POINTS = {"normal": (0.1, 0.1, 0.1), "blocked": (0.9, 0.1, 0.1), "capacity_limit": (0.1, 0.9, 0.1)}


def small_evaluation(history: object = None) -> Evaluation:
    man = manifest(length=T, stride=2, features=("offered_rel", "success_rel", "failed_rel"), version="stub",
                   history=history)
    art = small_artifact(MeanEncoder(), prototypes_at(POINTS, 0.2), man)
    rng = np.random.default_rng(0)
    lab = (["normal"] * 20 + ["blocked"] * 8 + ["normal"] * 12 + ["capacity_limit"] * 8 + ["storm"] * 4) * 2
    emb = np.array([POINTS.get(x, (0.8, 0.8, 0.8)) for x in lab]) + rng.normal(0, 0.03, (len(lab), 3))
    x = np.repeat(emb[:, None, :], T, axis=1).astype(np.float32)
    n = len(lab)
    src = np.asarray(["s1"] * (n // 2) + ["s2"] * (n // 2), dtype=object)
    ts = np.asarray([100.0 + 2 * (k % (n // 2)) for k in range(n)])
    lw = LabelledWindows(np.zeros((n, T, len(RAW_METRICS))), x, ts, src, np.asarray(lab, dtype=object),
                         np.zeros(n, dtype=bool))
    cfg = Config(window=WindowConfig(1.0, T, 2, 5), features=tuple(man["features"]))  # type: ignore[arg-type]
    return evaluate_detailed(art, lw, cfg, novel_labels=["storm"])


def test_write_plots_makes_every_png(tmp_path: Path) -> None:
    written = write_plots(small_evaluation(history={"loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.6, 0.5]}),
                          tmp_path / "plots")
    assert sorted(p.name for p in written) == sorted(PLOT_FILES)
    for p in written:
        assert p.stat().st_size > 5000 and p.read_bytes()[:8] == PNG, p


def test_training_curves_only_with_a_history(tmp_path: Path) -> None:
    written = write_plots(small_evaluation(history=None), tmp_path)
    assert "training_curves.png" not in {p.name for p in written}
    per_epoch = [{"epoch": e, "loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "fraction_active": 0.5} for e in range(4)]
    out = plot_history(per_epoch, tmp_path / "h.png")
    assert out is not None and out.read_bytes()[:8] == PNG
    assert plot_history({"note": "no numbers"}, tmp_path / "none.png") is None


def snapshots(path: Path, dim: int = 3) -> Path:
    rng = np.random.default_rng(0)
    labels = np.array(["normal"] * 20 + ["blocked"] * 10 + ["capacity_limit"] * 10)
    np.savez(path, emb=rng.random((3, len(labels), dim)), labels=labels, epochs=np.array([1, 5, 10]))
    return path


def test_animation_writes_a_gif(tmp_path: Path) -> None:
    out = animate_snapshots(snapshots(tmp_path / "s.npz"), tmp_path / "anim.gif")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == GIF
    out2 = animate_snapshots(snapshots(tmp_path / "s2.npz", dim=2), tmp_path / "anim2.gif")
    assert out2.read_bytes()[:4] == GIF


def test_animation_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(NetsiamError, match="no embedding snapshots"):
        animate_snapshots(tmp_path / "missing.npz", tmp_path / "a.gif")
    (tmp_path / "d.gif").mkdir()
    for out in (tmp_path / "a.png", tmp_path / "d.gif"):   # a usage error, as `plot embedding -o e.txt` is
        with pytest.raises(UsageError, match=r"\.gif or \.mp4"):
            animate_snapshots(snapshots(tmp_path / "s.npz"), out)
    np.savez(tmp_path / "obj.npz", emb=np.zeros((1, 2, 3)), labels=np.array(["a", "b"], dtype=object),
             epochs=np.array([1]))
    with pytest.raises(NetsiamError, match="str array"):   # object arrays would need unpickling
        animate_snapshots(tmp_path / "obj.npz", tmp_path / "a.gif")
    np.savez(tmp_path / "short.npz", emb=np.zeros((2, 3, 3)), labels=np.array(["a", "b", "c"]))
    with pytest.raises(NetsiamError, match="epochs"):
        animate_snapshots(tmp_path / "short.npz", tmp_path / "a.gif")
    np.savez(tmp_path / "shape.npz", emb=np.zeros((2, 3, 3)), labels=np.array(["a", "b"]), epochs=np.array([1, 2]))
    with pytest.raises(NetsiamError, match="expected emb"):
        animate_snapshots(tmp_path / "shape.npz", tmp_path / "a.gif")


def test_cli_plot_animate_and_dashboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    snapshots(model / "snapshots.npz")
    assert main(["plot", "animate", "--model", str(model), "-o", str(tmp_path / "a.gif")]) == 0
    assert main(["plot", "--animate", "--model", str(model), "-o", str(tmp_path / "b.gif")]) == 0
    assert (tmp_path / "a.gif").read_bytes()[:4] == GIF and (tmp_path / "b.gif").read_bytes()[:4] == GIF
    capsys.readouterr()
    assert main(["plot", "animate", "--model", str(tmp_path), "-o", str(tmp_path / "c.gif")]) == EXIT_DATA
    assert "no embedding snapshots" in capsys.readouterr().err
    # the dashboard picture needs a Prometheus; none listens on port 1
    assert main(["plot", "dashboard", "--prometheus", "http://127.0.0.1:1", "-o", str(tmp_path / "d.png")]) == EXIT_RUNTIME
    assert "127.0.0.1:1" in capsys.readouterr().err
    # a usage error: embedding needs --data
    assert main(["plot", "embedding", "--model", str(model), "-o", str(tmp_path / "e.png")]) == EXIT_USAGE
    assert "--data" in capsys.readouterr().err
    # a flag of another kind of plot is a usage error, not silently ignored
    for argv, says in ((["animate", "--prometheus", "http://x"], "--prometheus is for `plot dashboard`, not `plot animate`"),
                       (["dashboard", "--data", "t.jsonl"], "--data is for `plot embedding`, not `plot dashboard`"),
                       (["dashboard", "--model", str(model)], "--model is for `plot embedding` and `plot animate`"),
                       (["--range", "1h"], "--range is for `plot dashboard`, not `plot embedding`"),
                       (["dashboard", "--animate"], "--animate draws `plot animate`, not `plot dashboard`")):
        assert main(["plot", *argv, "-o", str(tmp_path / "f.png")]) == EXIT_USAGE, argv
        assert says in capsys.readouterr().err, argv


def test_cli_plot_embedding_from_a_trace(tmp_path: Path) -> None:
    small_artifact(lstm_encoder(8), prototypes_at({"normal": np.full(3, 0.4), "blocked": np.full(3, 0.6)}, 0.3, 5),
                   manifest(length=8, stride=4, version="t"), tmp_path / "m")
    t0 = 1795384000.0
    recs = [{"source": "a", "ts": t0 + k, "metrics": {m: (0.0 if 40 <= k < 60 and m == "SuccessfulCall" else 10.0)
                                                       for m in RAW_METRICS}} for k in range(100)]
    write_trace(tmp_path / "t.jsonl", recs)
    write_labels(tmp_path / "l.csv", [LabelInterval("a", t0 + 40, t0 + 60, "blocked")])
    out = tmp_path / "emb.png"
    assert main(["plot", "embedding", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "t.jsonl"),
                 "--labels", str(tmp_path / "l.csv"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5000
