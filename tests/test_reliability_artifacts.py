"""Reliability: tampered or inconsistent model artifacts are refused with a clear NetsiamError.

Every artifact here has a manifest whose hashes MATCH its files (written by ``Artifact.save``), so the
refusal comes from the check under test (Keras safe mode, shapes, prototype dimension), not from the
hash check. test_artifact.py covers the hash checks and manifest edits; this file adds hostile
encoders and the atomicity of a save against a concurrent reader.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from helpers import manifest, prototypes_at, small_artifact

from netsiam.errors import NetsiamError
from netsiam.features import DEFAULT_FEATURES
from netsiam.serving import Artifact, Prototypes, load_artifact

T, F = 12, len(DEFAULT_FEATURES)


def _manifest(version: str = "rel-1", length: int = T, features: list[str] | None = None) -> dict[str, Any]:
    return manifest(length=length, stride=1, features=DEFAULT_FEATURES if features is None else features,
                    version=version)


def _protos(dim: int = 3) -> Prototypes:
    return prototypes_at({"normal": np.full((1, dim), 0.2), "blocked": np.full((1, dim), 0.8)}, 0.5)


def _encoder(t: int = T, f: int = F, out: int = 3, lam: bool = False, scale: float = 1.0) -> Any:
    import keras

    inp = keras.Input(shape=(t, f), name="window")
    h = keras.layers.GlobalAveragePooling1D()(inp)
    if lam:
        # arbitrary Python code in a model file: what safe_mode exists to refuse
        h = keras.layers.Lambda(lambda z: z * 2.0, name="evil")(h)
    dense = keras.layers.Dense(out, activation="sigmoid", name="embedding")
    y = dense(h)
    model = keras.Model(inp, y)
    w, b = dense.get_weights()
    dense.set_weights([np.full_like(w, 0.1 * scale), np.zeros_like(b)])
    return model


def _save(path: Path, enc: Any, man: dict[str, Any], protos: Prototypes | None = None) -> Path:
    small_artifact(enc, protos or _protos(int(enc.output_shape[-1]) if enc.output_shape[-1] else 3), man, path)
    m = orjson.loads((path / "manifest.json").read_bytes())
    assert set(m["files"]) == {"encoder.keras", "prototypes.json"}  # hashes present and (so far) matching
    return path


def test_lambda_layer_is_refused_by_safe_mode_even_with_matching_hashes(tmp_path: Path) -> None:
    p = _save(tmp_path / "m", _encoder(lam=True), _manifest())
    with pytest.raises(NetsiamError, match=r"cannot load encoder\.keras safely") as ei:
        load_artifact(p)
    assert "Lambda" in str(ei.value) or "safe_mode" in str(ei.value)
    # the same model without the Lambda layer loads: the refusal is about the Lambda, nothing else
    ok = _save(tmp_path / "ok", _encoder(), _manifest())
    assert load_artifact(ok).embed(np.zeros((2, T, F), np.float32)).shape == (2, 3)


@pytest.mark.parametrize("case", ["window_length", "feature_count"])
def test_model_shape_not_matching_the_manifest_is_refused(tmp_path: Path, case: str) -> None:
    if case == "window_length":
        enc, man = _encoder(t=T + 3), _manifest()
        msg = rf"encoder input \(None, {T + 3}, {F}\) does not match the manifest \(window length {T}, {F} features\)"
    else:
        enc, man = _encoder(f=F - 1), _manifest()
        msg = rf"encoder input \(None, {T}, {F - 1}\) does not match the manifest \(window length {T}, {F} features\)"
    with pytest.raises(NetsiamError, match=msg):
        load_artifact(_save(tmp_path / "m", enc, man))


def test_prototypes_of_another_dimension_than_the_encoder_output_are_refused(tmp_path: Path) -> None:
    # hashes match; a 4-D encoder with 3-D prototypes
    p = _save(tmp_path / "m", _encoder(out=4), _manifest(), _protos(3))
    with pytest.raises(NetsiamError, match=r"prototypes\.json: invalid \(class 'normal': points must be finite \(k, 4\)\)"):
        load_artifact(p)


def test_truncated_or_flipped_encoder_is_refused_before_keras_reads_it(tmp_path: Path) -> None:
    p = _save(tmp_path / "m", _encoder(), _manifest())
    enc = p / "encoder.keras"
    good = enc.read_bytes()
    for bad in (good[: len(good) // 3], good[:-1], good[:100] + bytes([good[100] ^ 1]) + good[101:], b""):
        enc.write_bytes(bad)
        with pytest.raises(NetsiamError, match=r"encoder\.keras does not match the manifest \(truncated or modified\)"):
            load_artifact(p)
    enc.write_bytes(good)
    load_artifact(p)


def test_garbage_manifest_and_prototypes_give_clear_errors(tmp_path: Path) -> None:
    p = _save(tmp_path / "m", _encoder(), _manifest())
    (p / "manifest.json").write_bytes(b"\x00\xff{")
    with pytest.raises(NetsiamError, match="corrupt JSON"):
        load_artifact(p)
    (p / "manifest.json").write_bytes(b"[1,2]")
    with pytest.raises(NetsiamError, match="not a netsiam manifest"):
        load_artifact(p)
    (p / "manifest.json").write_bytes(orjson.dumps({**_manifest(), "features": ["rm -rf /"], "files": {}}))
    with pytest.raises(NetsiamError, match="unknown feature"):
        load_artifact(p)


def test_save_is_never_seen_torn_by_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader polling while a writer saves versions A and B in turn either loads a consistent
    artifact (the encoder the manifest describes) or gets a NetsiamError: never another exception,
    never version A's manifest with B's encoder.

    Save order is encoder (temp + rename) -> prototypes (atomic) -> manifest (atomic, hashes).
    Between the encoder rename and the manifest write a reader sees a NEW encoder with the OLD
    manifest: refused by the hash check (the reload watcher counts one failed reload and retries
    at the next change), not accepted.
    """
    enc = {"a": _encoder(scale=1.0), "b": _encoder(scale=-1.0)}
    probe = np.ones((1, T, F), np.float32)
    want = {v: np.asarray(e.predict_on_batch(probe)) for v, e in enc.items()}
    p = tmp_path / "live"
    _save(p, enc["a"], _manifest("a"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                v = "ab"[i % 2]
                Artifact(enc[v], _protos(), _manifest(v)).save(p)
                i += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    loaded = refused = 0
    try:
        import time

        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline and (loaded < 5 or refused < 1):
            try:
                art = load_artifact(p)
            except NetsiamError as e:
                assert "does not match the manifest" in str(e) or "missing" in str(e), e
                refused += 1
                continue
            v = art.manifest["version"]
            np.testing.assert_allclose(art.embed(probe), want[v], atol=1e-6)  # encoder agrees with manifest
            loaded += 1
    finally:
        stop.set()
        th.join(30)
    assert not errors, errors
    assert loaded >= 1
