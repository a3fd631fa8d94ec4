"""``torch_cpu_embed_ratio``: ``Artifact.embed`` under ``KERAS_BACKEND=torch`` on the CPU (the torch fast
path, :mod:`netsiam.torchpath`) vs Keras ``predict_on_batch`` of the same model under the same backend.

``KERAS_BACKEND=torch python -m bench.torch_cpu --model DIR [--quick]``

What a host without TensorFlow (a GPU host's CPU fallback, a torch-only install) gains. Both are given
the derived float32 windows and return numpy; timed interleaved round by round, best of each; each
embedding is compared with ``predict_on_batch`` (``torch_cpu_max_abs_diff``; the run fails above
1e-5). Prints one JSON line; without torch, ``torch_cpu_embed_ratio: null`` and why.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

from bench.common import best_rates

__all__ = ["main"]

SIZES = (1, 64, 1024)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="artifact directory")
    ap.add_argument("--quick", action="store_true", help="short timings")
    args = ap.parse_args(argv)
    if os.environ.get("KERAS_BACKEND") != "torch":
        print(json.dumps({"torch_cpu_embed_ratio": None, "torch_cpu_note": "needs KERAS_BACKEND=torch"}))
        return 0
    try:
        import torch
    except ImportError:
        print(json.dumps({"torch_cpu_embed_ratio": None, "torch_cpu_note": "torch is not installed"}))
        return 0

    from bench.embed import windows
    from netsiam.features import derive
    from netsiam.serving import load_artifact
    from netsiam.torchpath import TorchEncoder

    art = load_artifact(args.model)
    fast = art.compiled_encoder()
    if not isinstance(fast, TorchEncoder) or fast.device.type != "cpu":
        raise SystemExit(f"the torch fast path does not serve here ({fast!r})")
    x_all = derive(windows(max(SIZES)), art.features)                      # (N, T, F) float32
    secs = 0.3 if args.quick else 1.0   # per size, both contenders: make bench's 600 s budget
    out: dict[str, Any] = {}
    diff = 0.0
    for n in SIZES:
        x = x_all[:n]
        diff = max(diff, float(np.abs(art.embed(x) - np.asarray(art.encoder.predict_on_batch(x))).max()))

        def ours(x: np.ndarray = x) -> int:
            art.embed(x)
            return len(x)

        def keras(x: np.ndarray = x) -> int:
            art.encoder.predict_on_batch(x)
            return len(x)

        r_ours, r_keras = best_rates([ours, keras], secs)
        out[f"torch_cpu_embed_ratio_b{n}"] = round(r_ours / r_keras, 3)
        out[f"torch_cpu_windows_per_s_b{n}"] = {"fast": round(r_ours), "predict_on_batch": round(r_keras)}
    if not diff <= 1e-5:
        raise SystemExit(f"torch fast path differs from predict_on_batch by {diff:.2e}")
    out["torch_cpu_embed_ratio"] = out["torch_cpu_embed_ratio_b1024"]
    out["torch_cpu_max_abs_diff"] = float(f"{diff:.3g}")
    out["torch_cpu_note"] = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
