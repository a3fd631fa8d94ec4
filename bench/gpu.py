"""``gpu_embed_ratio``: ``Artifact.embed`` under ``KERAS_BACKEND=torch`` on a CUDA GPU vs a raw
``torch.nn.LSTM`` of the same shape on the same GPU (cuDNN).

``KERAS_BACKEND=torch python -m bench.gpu --model DIR [--quick] [--device cpu]``

* ours: ``Artifact.embed(x)`` exactly as the daemon calls it (numpy in, numpy out: the host->device
  copy of the batch and the copy back are part of it), plus the nearest-prototype step; under torch
  that is the torch fast path (:mod:`netsiam.torchpath`: pinned buffers, CUDA graphs);
* ``gpu_embed_ratio_host_io``: the same baseline fed a numpy batch and returning numpy (the copies the
  daemon cannot avoid), reported beside it;
* baseline: the same torch modules (``netsiam.torchpath._twin``: Normalization -> ``torch.nn.LSTM``
  -> Linear -> ReLU -> Linear -> Sigmoid, the artifact's weights) called directly on the batch already
  on the GPU, ``torch.inference_mode``, cuDNN on, one synchronise per call.

Prints one JSON line. Without torch or CUDA it prints ``gpu_embed_ratio: null`` and why, and exits 0;
``--device cpu`` runs the same code on the CPU instead (a dry run of this code path, not a GPU figure).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["main"]

DAEMON_BATCH = 1024
SIZES = (1024, 8192, 65536)


def _skip(why: str) -> int:
    print(json.dumps({"gpu_embed_ratio": None, "gpu_note": why}))
    return 0


def _best_rate(fn: Callable[[], int], secs: float, min_rounds: int = 3) -> float:
    best, rounds = 0.0, 0
    deadline = time.perf_counter() + secs
    while rounds < min_rounds or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
        rounds += 1
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="artifact directory")
    ap.add_argument("--quick", action="store_true", help="small batches, short timings")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: dry-run this benchmark's code path without a GPU")
    args = ap.parse_args(argv)
    if os.environ.get("KERAS_BACKEND") != "torch":
        return _skip("needs KERAS_BACKEND=torch")
    try:
        import torch
    except ImportError:
        return _skip("torch is not installed")
    if args.device == "cuda" and not torch.cuda.is_available():
        return _skip(f"no CUDA device (torch {torch.__version__}, cuda build {torch.version.cuda})")

    from bench.embed import windows
    from netsiam.features import derive
    from netsiam.serving import load_artifact
    from netsiam.torchpath import _twin

    dev = torch.device(args.device)
    art = load_artifact(args.model)
    ref = _twin(art.encoder, torch).to(dev).eval()
    sizes = (256, 1024) if args.quick else SIZES
    secs = 0.3 if args.quick else 2.0
    x_all = derive(windows(max(sizes)), art.features)                       # (N, T, F) float32, host
    with torch.inference_mode():
        xg = torch.from_numpy(x_all).to(dev)
        diff = float(np.abs(art.embed(x_all[:1024]) - ref(xg[:1024]).cpu().numpy()).max())

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize()

        out: dict[str, Any] = {}
        per: dict[str, dict[str, float]] = {}
        for n in sizes:
            x, xn = xg[:n], x_all[:n]

            def ours(xn: np.ndarray = xn, n: int = n) -> int:
                art.prototypes.classify(art.embed(xn, batch_size=max(1024, n)))
                return n

            def raw(x: Any = x, n: int = n) -> int:
                ref(x)
                sync()
                return n

            def raw_host(xn: np.ndarray = xn, n: int = n) -> int:
                ref(torch.from_numpy(xn).to(dev)).cpu().numpy()
                return n

            for fn in (ours, raw, raw_host, ours, raw, raw_host):  # warm up: cuDNN plans, Keras traces
                fn()
            r_ours, r_raw, r_host = 0.0, 0.0, 0.0
            for _ in range(3):  # interleaved, best of each
                r_ours = max(r_ours, _best_rate(ours, secs / 3))
                r_raw = max(r_raw, _best_rate(raw, secs / 3))
                r_host = max(r_host, _best_rate(raw_host, secs / 3))
            per[str(n)] = {"embed": round(r_ours), "torch_lstm": round(r_raw), "ratio": round(r_ours / r_raw, 3),
                           "torch_lstm_host_io": round(r_host), "ratio_host_io": round(r_ours / r_host, 3)}
    batch = DAEMON_BATCH if str(DAEMON_BATCH) in per else int(max(per, key=int))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run, not a GPU figure)"
    out.update({
        "gpu_embed_ratio": per[str(batch)]["ratio"] if dev.type == "cuda" else None,
        "gpu_batch": batch,
        "gpu_embed_windows_per_s": per[str(batch)]["embed"],
        "gpu_torch_lstm_windows_per_s": per[str(batch)]["torch_lstm"],
        # the same raw LSTM fed from and returning to host memory, as the daemon must be
        "gpu_embed_ratio_host_io": per[str(batch)]["ratio_host_io"] if dev.type == "cuda" else None,
        "gpu_name": name,
        "gpu_rates": per,
        "gpu_max_abs_diff": round(diff, 7),
        "gpu_note": (f"torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}" if dev.type == "cuda"
                     else "--device cpu dry run: ratio withheld"),
    })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
