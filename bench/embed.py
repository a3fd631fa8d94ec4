"""``embed_ratio``: the daemon's per-micro-batch embed function vs a raw Keras call of the same model.

The daemon embeds each micro-batch with :func:`netsiam.detector.pipeline.run_batch` (derive features
-> ``Artifact.embed`` (``predict_on_batch``, chunks padded to a power of two) -> nearest prototype).
Both baselines get the derived float32 windows and return a numpy array, so they do strictly less
work than the daemon: ``model(x, training=False)`` (eager call) and ``model.predict_on_batch(x)``.
The ratio is taken against the *faster* of the two at each batch size (always ``predict_on_batch``
so far: the eager call is 3-70x slower). The daemon's function and ``predict_on_batch`` are timed
interleaved, round by round, best of each (a shared machine: the least disturbed round is the
machine's real speed); a ratio above 1 is noise, the daemon does strictly more work.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Ctx, best_rates, wall_and_cpu_rates

__all__ = ["BATCH_SIZES", "bench_embed", "windows"]

BATCH_SIZES = (1, 64, 1024, 8192)
ODD_BATCH = 700  # not a power of two: Artifact.embed pads it to 1024


def windows(n: int, seed: int = 11) -> np.ndarray:
    """``n`` raw simulated windows (n, T, R) in RAW_METRICS order, default window config."""
    from netsiam.config import WindowConfig
    from netsiam.features import RAW_METRICS
    from netsiam.trainer.simulate import simulate
    from netsiam.windowing import windows_from_records

    records, _ = simulate(8, 20, seed=seed)
    tuples = [(r.source, r.ts, tuple(float(r.metrics.get(m, 0.0)) for m in RAW_METRICS)) for r in records]
    raw = windows_from_records(tuples, WindowConfig(), len(RAW_METRICS)).raw
    reps = -(-n // len(raw))
    return np.ascontiguousarray(np.tile(raw, (reps, 1, 1))[:n])


def bench_embed(ctx: Ctx) -> dict[str, Any]:
    from netsiam.config import DetectorConfig
    from netsiam.detector.batch import Batch, run_batch
    from netsiam.features import derive
    from netsiam.serving import load_artifact

    assert ctx.model is not None
    art = load_artifact(ctx.model)
    model = art.encoder
    daemon_batch = DetectorConfig().batch_max
    sizes = BATCH_SIZES[:3] if ctx.quick else BATCH_SIZES
    sizes = tuple(sorted({*sizes, daemon_batch, ODD_BATCH}))
    secs = 0.4 if ctx.quick else 4.0
    raw_all = windows(max(sizes))
    out: dict[str, Any] = {"embed_daemon_batch": daemon_batch, "embed_model": _describe(ctx.model)}
    per: dict[str, dict[str, float]] = {}
    cpu_ratio: dict[int, float] = {}
    for n in sizes:
        raw = raw_all[:n]
        x = derive(raw, art.features)
        batch = Batch(raw, [], art, {}, 0)
        contenders: dict[str, Callable[[], object]] = {
            "daemon": functools.partial(run_batch, batch),
            "predict_on_batch": functools.partial(_predict_on_batch, model, x),
        }
        fns = [_repeated(f, n) for f in contenders.values()]  # also traces/compiles each shape before timing
        wall, cpu = wall_and_cpu_rates(fns, secs, min_rounds=5)
        rates = dict(zip(contenders, wall, strict=True))
        cpu_ratio[n] = cpu[0] / cpu[1]
        # the eager call is 3-70x slower than predict_on_batch at every size: a few rounds on its own
        rates["keras_call"] = best_rates([_repeated(functools.partial(_keras_call, model, x), n)], 0.0,
                                         min_rounds=2)[0]
        per[str(n)] = rates
        out[f"embed_ratio_b{n}"] = round(rates["daemon"] / max(rates["keras_call"], rates["predict_on_batch"]), 3)
    d = per[str(daemon_batch)]
    out["embed_ratio"] = out[f"embed_ratio_b{daemon_batch}"]
    # the same ratio in windows per CPU-second of this process: a cross-check that a neighbour's
    # load cannot skew (it measures work, where the ratio above measures wall time)
    out["embed_ratio_cpu"] = round(cpu_ratio[daemon_batch], 3)
    out["embed_ratio_cpu_by_batch"] = {str(k): round(v, 3) for k, v in cpu_ratio.items()}
    out["embed_windows_per_s"] = round(d["daemon"])
    out["embed_keras_call_windows_per_s"] = round(d["keras_call"])
    out["embed_predict_on_batch_windows_per_s"] = round(d["predict_on_batch"])
    out["embed_rates"] = {k: {kk: round(vv) for kk, vv in v.items()} for k, v in per.items()}
    return out


def _keras_call(model: Any, x: np.ndarray) -> object:
    return np.asarray(model(x, training=False))


def _predict_on_batch(model: Any, x: np.ndarray) -> object:
    return np.asarray(model.predict_on_batch(x))


def _repeated(fn: Callable[[], object], n: int, round_s: float = 0.03) -> Callable[[], int]:
    """``fn`` (one call on ``n`` windows) repeated so one timed round lasts about ``round_s`` at least:
    tiny batches are not timed one call at a time. Calls ``fn`` twice to warm up and calibrate."""
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(1, min(512, int(round_s / max(time.perf_counter() - t0, 1e-6))))

    def timed() -> int:
        for _ in range(reps):
            fn()
        return reps * n

    return timed


def _describe(path: Path) -> str:
    import json

    man = json.loads((path / "manifest.json").read_text())
    spec = man.get("model") or {}
    w = man["window"]
    return (f"T={w['length']} F={len(man['features'])} lstm={spec.get('lstm_units', '?')} "
            f"dense={spec.get('dense_units', '?')} D={spec.get('embedding_dim', '?')}")
