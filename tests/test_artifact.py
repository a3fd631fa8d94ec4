"""Artifact save/load: identical embeddings in a fresh process, and clear errors for mismatches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import manifest, small_artifact

from netsiam.errors import NetsiamError
from netsiam.features import DEFAULT_FEATURES
from netsiam.serving import Artifact, Prototypes, load_artifact
from netsiam.trainer.model import EncoderSpec, build_encoder

T, F = 30, len(DEFAULT_FEATURES)


def make_artifact(path: Path, seed: int = 3) -> tuple[Artifact, np.ndarray]:
    """A small encoder with non-trivial normalisation and prototypes; returns it and probe windows."""
    rng = np.random.default_rng(seed)
    spec = EncoderSpec(T, F, lstm_units=16, dense_units=8)
    mean, var = rng.normal(0, 1, F), rng.uniform(0.5, 2.0, F)
    enc = build_encoder(spec, mean, var, seed=seed)
    protos = Prototypes(method="kmeans")
    protos.set("normal", rng.random((2, 3)), 0.12, 300)
    protos.set("blocked", rng.random((1, 3)), 0.05, 40)
    man = manifest(length=T, stride=5, version="20261123T000000Z-abcdef12", mean=mean, std=np.sqrt(var),
                   model=spec.to_dict())
    art = small_artifact(enc, protos, man, path)
    x = rng.normal(0, 2, (37, T, F)).astype(np.float32)
    return art, x


def test_round_trip_in_a_fresh_process_gives_identical_embeddings(tmp_path: Path) -> None:
    art, x = make_artifact(tmp_path / "m")
    before = art.embed(x)
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import numpy as np
        from netsiam.serving import load_artifact
        a = load_artifact({str(tmp_path / 'm')!r})
        np.save({str(tmp_path / 'after.npy')!r}, a.embed(np.load({str(tmp_path / 'x.npy')!r})))
        print(a.version)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = np.load(tmp_path / "after.npy")
    assert after.shape == (37, 3)
    np.testing.assert_array_equal(after, before)
    assert proc.stdout.strip().splitlines()[-1] == art.version

    loaded = load_artifact(tmp_path / "m")
    assert loaded.prototypes.classes == ["normal", "blocked"]
    for p, q in zip(loaded.prototypes.points, art.prototypes.points, strict=True):
        np.testing.assert_array_equal(p, q)
    assert loaded.prototypes.thresholds == [0.12, 0.05] and loaded.prototypes.support == [300, 40]
    assert loaded.manifest["normalisation"] == art.manifest["normalisation"]


def _edit_manifest(path: Path, **changes: object) -> None:
    m = orjson.loads((path / "manifest.json").read_bytes())
    m.update(changes)
    (path / "manifest.json").write_bytes(orjson.dumps(m))


def test_window_length_changed_in_the_manifest_is_refused(tmp_path: Path) -> None:
    make_artifact(tmp_path / "m")
    _edit_manifest(tmp_path / "m", window={"interval_s": 1.0, "length": 31, "stride": 5, "max_gap": 5})
    with pytest.raises(NetsiamError, match=rf"does not match the manifest \(window length 31, {F} features\)"):
        load_artifact(tmp_path / "m")


def test_feature_list_changed_in_the_manifest_is_refused(tmp_path: Path) -> None:
    make_artifact(tmp_path / "m")
    _edit_manifest(tmp_path / "m", features=list(DEFAULT_FEATURES[:4]))
    with pytest.raises(NetsiamError, match="4 features"):
        load_artifact(tmp_path / "m")


@pytest.mark.parametrize(("changes", "says"), [
    ({"files": None}, "'files' must map"),
    ({"files": {"encoder.keras": 7}}, "'files' must map"),
    ({"features": "offered_rel"}, "'features' must be a list"),
    ({"slow_answers": {"normal_up_to": "x"}}, "'slow_answers' must be"),
    ({"slow_answers": {"normal_up_to": -1}}, "'slow_answers' must be"),
    ({"slow_answers": [3]}, "'slow_answers' must be"),
    ({"window": None}, "bad window"),
])
def test_a_hand_edited_manifest_of_the_wrong_types_is_a_data_error(tmp_path: Path, changes: dict[str, object],
                                                                   says: str) -> None:
    """Refused at load (a hot reload keeps the model served), not an internal error in the daemon's loop."""
    make_artifact(tmp_path / "m")
    _edit_manifest(tmp_path / "m", **changes)
    with pytest.raises(NetsiamError, match=says):
        load_artifact(tmp_path / "m")


def test_truncated_encoder_fails_the_hash_check(tmp_path: Path) -> None:
    make_artifact(tmp_path / "m")
    enc = tmp_path / "m" / "encoder.keras"
    enc.write_bytes(enc.read_bytes()[: enc.stat().st_size // 2])
    with pytest.raises(NetsiamError, match=r"encoder.keras does not match the manifest \(truncated or modified\)"):
        load_artifact(tmp_path / "m")


def test_prototypes_with_the_wrong_dimension_are_refused(tmp_path: Path) -> None:
    make_artifact(tmp_path / "m")
    p = tmp_path / "m" / "prototypes.json"
    obj = orjson.loads(p.read_bytes())
    obj["classes"]["blocked"]["points"] = [[0.1, 0.2]]
    p.write_bytes(orjson.dumps(obj))
    with pytest.raises(NetsiamError, match="prototypes.json does not match"):    # hash first ...
        load_artifact(tmp_path / "m")
    _rehash(tmp_path / "m")                                                       # ... then the shape
    with pytest.raises(NetsiamError, match=r"class 'blocked': points must be finite \(k, 3\)"):
        load_artifact(tmp_path / "m")


def _rehash(path: Path) -> None:
    import hashlib

    m = orjson.loads((path / "manifest.json").read_bytes())
    m["files"]["prototypes.json"] = hashlib.sha256((path / "prototypes.json").read_bytes()).hexdigest()
    (path / "manifest.json").write_bytes(orjson.dumps(m))


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    make_artifact(tmp_path / "m")
    (tmp_path / "m" / "prototypes.json").unlink()
    with pytest.raises(NetsiamError, match="prototypes.json is missing"):
        load_artifact(tmp_path / "m")
    with pytest.raises(NetsiamError, match="not found"):
        load_artifact(tmp_path / "nothing")


def test_saving_prototypes_again_updates_the_hash(tmp_path: Path) -> None:
    art, _ = make_artifact(tmp_path / "m")
    art.prototypes.set("capacity_limit", np.array([[0.5, 0.5, 0.9]]), 0.07, 12)
    art.save_prototypes(tmp_path / "m")
    assert load_artifact(tmp_path / "m").prototypes.classes == ["normal", "blocked", "capacity_limit"]


def test_artifact_files_are_readable_by_other_users(tmp_path: Path) -> None:
    """The systemd unit runs the daemon as a dynamic user: 0600 files would be unreadable."""
    import os
    import stat

    from netsiam.traceio import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_artifact_saved_under_tensorflow_runs_under_another_backend(tmp_path: Path, backend: str) -> None:
    """The same ``.keras`` file, loaded by Keras on the torch (or jax) backend in a fresh process, gives the
    embeddings TensorFlow gave: the model and the embed path use the Keras 3 API only."""
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (make install adds CPU torch; jax is optional)")
    art, x = make_artifact(tmp_path / "m")
    before = art.embed(x)
    labels_before = art.prototypes.classify(before)[0]
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import keras, numpy as np
        from netsiam.serving import load_artifact
        assert keras.backend.backend() == {backend!r}, keras.backend.backend()
        a = load_artifact({str(tmp_path / 'm')!r})
        e = a.embed(np.load({str(tmp_path / 'x.npy')!r}))
        np.save({str(tmp_path / 'after.npy')!r}, e)
        print(" ".join(a.prototypes.classify(e)[0]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          env=os.environ | {"KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = np.load(tmp_path / "after.npy")
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert proc.stdout.split() == list(labels_before)
