"""``embed_ratio``: the daemon's per-micro-batch embed function vs a raw Keras call of the same model.

The daemon embeds each micro-batch as :func:`netsiam.detector.batch.run_batch` does (derive features
-> embed -> nearest prototype; under TensorFlow one XLA-compiled call derives and embeds,
:meth:`~netsiam.serving.Artifact.embed_raw`). Baselines and contenders, all given the derived
float32 windows and returning a numpy array (so they do strictly less work than the daemon):

* ``predict_on_batch``: plain Keras ``model.predict_on_batch(x)``, the baseline of every ratio;
* ``keras_call``: the eager ``model(x, training=False)`` (3-70x slower: a few rounds on its own);
* ``plain_daemon``: ``run_batch`` with the fast path off (``Artifact(compiled=False)``), the
  daemon before it;
* ``compiled``: the compiled encoder alone (``CompiledEncoder.embed``);
* ``keras_jit``: Keras' own XLA route, ``model.compile(jit_compile=True)`` + ``predict_on_batch``
  (the alternative the fast path was measured against).

``embed_ratio`` is the daemon's function over ``predict_on_batch`` at the daemon's batch (1,024);
``embed_compiled_ratio`` the compiled encoder alone over it. Each embedding is checked against
``predict_on_batch`` on the same windows (``embed_max_abs_diff``; above 1e-5 the benchmark fails).
The contenders are timed interleaved, round by round, best of each (a shared machine: the least
disturbed round is the machine's real speed).
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
    from netsiam.compiled import TOLERANCE
    from netsiam.config import DetectorConfig
    from netsiam.detector.batch import Batch, run_batch
    from netsiam.features import derive
    from netsiam.serving import Artifact, load_artifact

    assert ctx.model is not None
    art = load_artifact(ctx.model)
    plain = Artifact(art.encoder, art.prototypes, art.manifest, compiled=False)
    fast = art.compiled_encoder()
    model = art.encoder
    jit = _keras_jit(ctx.model)
    daemon_batch = DetectorConfig().batch_max
    sizes = BATCH_SIZES[:3] if ctx.quick else BATCH_SIZES
    sizes = tuple(sorted({*sizes, daemon_batch, ODD_BATCH}))
    secs = 0.4 if ctx.quick else 4.0
    raw_all = windows(max(sizes))
    out: dict[str, Any] = {"embed_daemon_batch": daemon_batch, "embed_model": _describe(ctx.model),
                           "embed_compiled": fast is not None}
    per: dict[str, dict[str, float]] = {}
    cpu_ratio: dict[int, float] = {}
    worst = 0.0
    for n in sizes:
        raw = raw_all[:n]
        x = derive(raw, art.features)
        ref = _predict_on_batch(model, x)
        worst = max(worst, float(np.abs(run_batch(Batch(raw, [], art, {}, 0)).emb - ref).max()))
        contenders: dict[str, Callable[[], object]] = {
            "daemon": functools.partial(run_batch, Batch(raw, [], art, {}, 0)),
            "predict_on_batch": functools.partial(_predict_on_batch, model, x),
            "plain_daemon": functools.partial(run_batch, Batch(raw, [], plain, {}, 0)),
        }
        if fast is not None:
            contenders["compiled"] = functools.partial(fast.embed, x)
        if jit is not None:
            contenders["keras_jit"] = functools.partial(_predict_on_batch, jit, x)
        fns = [_repeated(f, n) for f in contenders.values()]  # also traces/compiles each shape before timing
        wall, cpu = wall_and_cpu_rates(fns, secs, min_rounds=5)
        rates = dict(zip(contenders, wall, strict=True))
        cpu_ratio[n] = cpu[0] / cpu[1]
        # the eager call is 3-70x slower than predict_on_batch at every size: a few rounds on its own
        rates["keras_call"] = best_rates([_repeated(functools.partial(_keras_call, model, x), n)], 0.0,
                                         min_rounds=2)[0]
        per[str(n)] = rates
        out[f"embed_ratio_b{n}"] = round(rates["daemon"] / rates["predict_on_batch"], 3)
    if worst > TOLERANCE:
        raise AssertionError(f"the daemon's embeddings differ from predict_on_batch by {worst:.2e} (> {TOLERANCE:g})")
    d = per[str(daemon_batch)]
    base = d["predict_on_batch"]
    out["embed_ratio"] = out[f"embed_ratio_b{daemon_batch}"]
    out["embed_max_abs_diff"] = float(f"{worst:.2e}")
    out["embed_plain_ratio"] = round(d["plain_daemon"] / base, 3)
    out["embed_compiled_ratio"] = round(d["compiled"] / base, 3) if "compiled" in d else None
    out["embed_keras_jit_ratio"] = round(d["keras_jit"] / base, 3) if "keras_jit" in d else None
    # the same ratio in windows per CPU-second of this process: a cross-check that a neighbour's
    # load cannot skew (it measures work, where the ratio above measures wall time)
    out["embed_ratio_cpu"] = round(cpu_ratio[daemon_batch], 3)
    out["embed_ratio_cpu_by_batch"] = {str(k): round(v, 3) for k, v in cpu_ratio.items()}
    out["embed_windows_per_s"] = round(d["daemon"])
    out["embed_keras_call_windows_per_s"] = round(d["keras_call"])
    out["embed_predict_on_batch_windows_per_s"] = round(base)
    out["embed_rates"] = {k: {kk: round(vv) for kk, vv in v.items()} for k, v in per.items()}
    return out


def _keras_jit(path: Path) -> Any:
    """The encoder loaded again and compiled by Keras with ``jit_compile=True`` (TensorFlow only), or None."""
    import keras

    from netsiam.serving import ENCODER_FILE

    if keras.backend.backend() != "tensorflow":
        return None
    model = keras.saving.load_model(path / ENCODER_FILE, compile=False, safe_mode=True)
    model.compile(jit_compile=True)
    return model


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
