"""The torch fast path of Artifact.embed (netsiam.torchpath) equals Keras within 1e-5 and falls back.

Run under ``KERAS_BACKEND=torch`` in a fresh process (this one runs TensorFlow), on the CPU: the
shipped model and a small LSTM one with non-trivial normalisation, at 1, odd and beyond-1,024 sizes,
against Keras ``predict_on_batch`` on the same windows; the switch, an encoder of another structure,
a model refused by the rounding bound and a wrong copy of the weights each leave plain Keras serving.
The GPU path's cutting into fixed shapes, padding and staging buffers run on the CPU too; its CUDA
calls (pinned memory, streams, graphs) need a GPU: not exercised here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import manifest, prototypes_at, small_artifact

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed (make install adds CPU torch)")

SIZES = (1, 3, 64, 300, 1024, 2500)

SCRIPT = textwrap.dedent("""
    import json, logging, os, sys
    import numpy as np
    import keras
    import netsiam.torchpath as tp
    from netsiam.serving import load_artifact

    assert keras.backend.backend() == "torch", keras.backend.backend()
    warnings = []
    logging.getLogger("netsiam.serving").addHandler(
        type("H", (logging.Handler,), {"emit": lambda self, r: warnings.append(r.getMessage())})(logging.WARNING))
    small, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    out = {}

    def case(path, name):
        a = load_artifact(path)
        fast = a.compiled_encoder()
        rng = np.random.default_rng(5)
        t, f = a.window.length, len(a.features)
        stats = a._input_stats()
        x = rng.normal(0, 1, (max(sizes), t, f))
        x = (x * stats[1] + stats[0] if stats else x).astype(np.float32)
        diffs = {n: float(np.abs(a.embed(x[:n]) - np.asarray(a.encoder.predict_on_batch(x[:n]))).max())
                 for n in sizes}
        out[name] = {"fast": type(fast).__name__ if fast is not None else None,
                     "device": str(fast.device) if fast is not None else None, "diffs": diffs,
                     "labels_equal": bool((a.prototypes.classify(a.embed(x))[0]
                                           == a.prototypes.classify(np.asarray(a.encoder.predict_on_batch(x)))[0]).all())}

    case(None, "shipped")
    case(small, "small")
    a = load_artifact(small)                  # the GPU path's cutting, padding and buffers, run on the CPU
    enc = tp.TorchEncoder(a.encoder, a._input_stats(), device="cpu", bucketed=True)
    x = np.random.default_rng(6).normal(0, 1, (max(sizes), a.window.length, len(a.features))).astype(np.float32)
    out["bucketed"] = {"diffs": {n: float(np.abs(enc.embed(x[:n]) - np.asarray(a.encoder.predict_on_batch(x[:n]))).max())
                                 for n in sizes},
                       "slots": sorted(enc._slots), "buckets": list(enc.buckets)}
    os.environ["NETSIAM_TORCH_FAST"] = "0"
    case(small, "switched_off")
    del os.environ["NETSIAM_TORCH_FAST"]
    import netsiam.compiled as compiled
    tol = compiled.TOLERANCE
    compiled.TOLERANCE = 1e-12                # every model is now "too sensitive": refused, Keras serves
    case(small, "refused_bound")
    compiled.TOLERANCE = tol
    twin = tp._twin
    def wrong(model, torch):                  # a copy with one weight off: the equality check must catch it
        net = twin(model, torch)
        with torch.no_grad():
            net.lstm.bias_ih_l0[0] += 0.5
        return net
    tp._twin = wrong
    case(small, "wrong_copy")
    tp._twin = twin
    inp = keras.Input((20, 6))
    gru = keras.Model(inp, keras.layers.Dense(3, activation="sigmoid")(keras.layers.GRU(4)(inp)))
    out["gru"] = tp.torch_encoder(gru) is None
    out["warnings"] = warnings
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from netsiam.features import DEFAULT_FEATURES
    from netsiam.trainer.model import EncoderSpec, build_encoder

    rng = np.random.default_rng(3)
    f = len(DEFAULT_FEATURES)
    mean, var = rng.normal(0, 1, f), rng.uniform(0.5, 2.0, f)
    enc = build_encoder(EncoderSpec(20, f, lstm_units=8, dense_units=8), mean, var, seed=3)
    path = tmp_path_factory.mktemp("torchpath") / "m"
    small_artifact(enc, prototypes_at({"normal": [0.5, 0.5, 0.5]}), manifest(length=20, stride=1, mean=mean,
                                                                              std=np.sqrt(var)), path)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path), ",".join(map(str, SIZES))], capture_output=True,
                          text=True, timeout=300,
                          env=os.environ | {"KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


@pytest.mark.parametrize("which", ["shipped", "small"])
def test_torch_path_serves_and_equals_keras_within_1e5(result: dict[str, Any], which: str) -> None:
    r = result[which]
    assert (r["fast"], r["device"]) == ("TorchEncoder", "cpu")
    assert set(r["diffs"]) == {str(n) for n in SIZES}
    assert max(r["diffs"].values()) <= 1e-5, r["diffs"]
    assert r["labels_equal"]


@pytest.mark.parametrize("which,why", [("switched_off", None), ("refused_bound", "too sensitive to float32 rounding"),
                                       ("wrong_copy", "torch output differs from Keras")])
def test_torch_path_falls_back_to_keras(result: dict[str, Any], which: str, why: str | None) -> None:
    r = result[which]
    assert r["fast"] is None                              # plain Keras serves ...
    assert max(r["diffs"].values()) <= 1e-5               # ... and serves the model itself
    if why is not None:
        assert any(why in w for w in result["warnings"]), result["warnings"]


def test_bucketed_path_cuts_pads_and_equals_keras(result: dict[str, Any]) -> None:
    """What the GPU path does around CUDA (fixed shapes, zero padding, staging buffers), on the CPU."""
    r = result["bucketed"]
    assert max(r["diffs"].values()) <= 1e-5, r["diffs"]
    assert r["slots"] == r["buckets"]                     # 1..2,500 windows used every shape, no other


def test_torch_path_refuses_another_structure(result: dict[str, Any]) -> None:
    assert result["gru"] is True


def test_torch_path_module_needs_no_torch_to_import() -> None:
    """serving imports netsiam.torchpath on a TensorFlow-only host: the module must not import torch itself."""
    code = "import sys, netsiam.serving; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"KERAS_BACKEND": "tensorflow"}, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
