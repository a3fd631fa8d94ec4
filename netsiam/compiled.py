"""The CPU fast path of :meth:`netsiam.serving.Artifact.embed`: the encoder compiled by XLA.

Under the TensorFlow backend the Keras model's forward pass is wrapped in
``tf.function(jit_compile=True)`` and traced for a few fixed batch shapes (:data:`BUCKETS`); a call
of any size is cut into bucket-sized chunks at the least measured cost (:func:`plan`), the last one
zero-padded. Measured with ``make bench`` on the 2-core machine (bench/embed.py): twice the windows
per second of Keras ``predict_on_batch`` at 1,024 windows, 2.5x at 1. Keras' own
``compile(jit_compile=True)`` + ``predict_on_batch`` was within 15% from 64 to 8,192 windows (faster
at 700: it compiles that exact size, as it does every distinct size the daemon meets) but 1.4-2.5x
slower at batch 1 (its data adapter runs on every call), so the model's call is traced directly.

XLA needs static shapes: each bucket is compiled once (~0.6 s on 2 busy cores), on first use, under
a lock (the daemon embeds on a worker thread while a reload may warm up another artifact). Each
compiled bucket is checked against ``predict_on_batch`` on the same input, windows drawn from the
model's input statistics (within :data:`TOLERANCE`); a backend other than TensorFlow, a model that is not a Keras model, a failed
compilation or a failed check all make :func:`compile_encoder` / :meth:`CompiledEncoder.embed`
give up, and the caller serves through plain Keras instead. ``NETSIAM_XLA=0`` in the environment
turns the fast path off for every command (``detect`` and ``evaluate`` alike, so they embed the same way).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from netsiam.features import RAW_METRICS, derive, feature_columns

__all__ = ["BUCKETS", "COSTS_MS", "TOLERANCE", "CompileError", "CompiledEncoder", "Inputs", "check_equal",
           "check_rounding", "compile_encoder", "enabled", "near_mean_windows", "plan", "probe_windows",
           "raw_probe_windows"]

log = logging.getLogger("netsiam.serving")

# Milliseconds per compiled call of each batch shape (shipped model, 2-core machine, best of 30 s of
# interleaved rounds). Not linear: 512 windows cost little more than 256 (measured, twice; the cause
# in XLA's generated code was not examined), so padding 300 windows to 512 beats 256 + 64. Only the ratios
# matter: plan() minimises their sum. Chunks beyond 1,024 are cut into 1,024s: at 4,096 one call is
# no faster per window than four (85 vs 4 x 22 ms).
# One window costs as much as 4 (0.50 vs 0.49 ms: the call's fixed cost), so there is no 1-window shape.
COSTS_MS: dict[int, float] = {4: 0.49, 16: 0.72, 64: 1.70, 256: 5.95, 512: 6.72, 1024: 12.3}
BUCKETS: tuple[int, ...] = tuple(sorted(COSTS_MS))
TOLERANCE = 1e-5  # the compiled model must agree with Keras within this (max absolute difference)


class CompileError(RuntimeError):
    """The compiled path cannot serve this model: use plain Keras."""


def enabled() -> bool:
    """False when ``NETSIAM_XLA`` is set to 0/false/no/off (the operator's kill switch)."""
    return os.environ.get("NETSIAM_XLA", "1").strip().lower() not in ("0", "false", "no", "off")


def plan(n: int, costs: dict[int, float] | None = None) -> list[tuple[int, int]]:
    """Chunks ``(windows taken, bucket)`` covering ``n`` windows at the least total cost (``costs``:
    per bucket, default :data:`COSTS_MS`): full largest buckets first, then the cheapest cut of the
    rest (e.g. 300 -> 512 padded, 1,100 -> 1,024 + 64 + 16 padded). Only the last chunk is padded."""
    table = tuple(sorted((costs or COSTS_MS).items()))
    big = table[-1][0]
    return [(big, big)] * (n // big) + list(_best_rest(n % big, table)[1])


@functools.lru_cache(maxsize=8192)
def _best_rest(n: int, table: tuple[tuple[int, float], ...]) -> tuple[float, tuple[tuple[int, int], ...]]:
    """(cost, chunks) for ``n`` < the largest bucket; exact (memoised recursion over at most 1,024 sizes)."""
    if n == 0:
        return 0.0, ()
    best: tuple[float, tuple[tuple[int, int], ...]] | None = None
    for b, c in reversed(table):  # on a tie, the larger chunk first (fewer calls)
        cand: tuple[float, tuple[tuple[int, int], ...]]
        if b >= n:
            cand = (c, ((n, b),))
        else:
            rest_cost, rest = _best_rest(n - b, table)
            cand = (c + rest_cost, ((b, b), *rest))
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None  # the table is never empty
    return best


Inputs = tuple[np.ndarray, np.ndarray]   # (mean, std) per feature of a model's inputs


def probe_windows(n: int, shape: tuple[int, ...], inputs: Inputs | None) -> np.ndarray:
    """``n`` deterministic (T, F) windows in the model's input range (standard normal without
    statistics), float32: every other one steady (the same sample at every step, as most real traffic
    is), where a model's terms cancel and rounding shows; the rest noise. What a fast path's output is
    compared with Keras on."""
    rng = np.random.default_rng(n)
    z = rng.normal(0.0, 1.0, (n, *shape))
    z[::2] = rng.normal(0.0, 1.0, (len(z[::2]), 1, shape[1]))
    if inputs is not None:
        mean, std = inputs
        z = z * std + mean
    return z.astype(np.float32)


def raw_probe_windows(n: int, length: int) -> np.ndarray:
    """``n`` deterministic raw windows (T, R) in RAW_METRICS order, float64, over the range real traffic
    spans: 0.2-300 calls offered per interval, every share of them answered, failed (timed out or
    refused) or retransmitted, 1-60 calls held per call/s, answers within 0-2 s; every other window
    steady, the last one all zeros (an idle source: the load floor)."""
    rng = np.random.default_rng(n)
    idx = {m: i for i, m in enumerate(RAW_METRICS)}
    rate = rng.uniform(0.2, 300.0, (n, 1))
    out = np.zeros((n, length, len(RAW_METRICS)))
    offered = np.maximum(rate * rng.normal(1.0, 0.1, (n, length)), 0.0)
    ok = offered * rng.uniform(0.0, 1.0, (n, 1))
    failed = offered - ok
    timeouts = failed[..., None] * rng.uniform(0.0, 0.5, (n, 1, 2))
    for name, v in (("OutgoingCall", offered), ("SuccessfulCall", ok), ("FailedCall", failed),
                    ("Retransmissions", offered * rng.uniform(0.0, 5.0, (n, 1))),
                    ("CurrentCall", offered * rng.uniform(1.0, 60.0, (n, 1))),
                    ("ResponseTime1", rng.uniform(0.0, 2000.0, (n, length))),
                    ("FailedMaxUDPRetrans", timeouts[..., 0]), ("FailedTimeoutOnRecv", timeouts[..., 1])):
        out[..., idx[name]] = v
    out[::2] = out[::2, :1]
    out[-1] = 0.0
    return out


def check_equal(got: np.ndarray, want: np.ndarray, path: str, n: int) -> None:
    """CompileError unless a fast path's output ``got`` is within :data:`TOLERANCE` of Keras' ``want``."""
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= TOLERANCE:
        raise CompileError(f"{path} output differs from Keras by {diff:.2e} at batch {n} (> {TOLERANCE:g})")


def near_mean_windows(shape: tuple[int, ...], inputs: Inputs | None, n: int = 16) -> np.ndarray:
    """Windows near the inputs' mean, float32, for :func:`check_rounding`: a steady normal stream sits
    there (far out, a sigmoid saturates and hides the sensitivity); spreads of 0, 0.01, 0.1 and 1
    standard deviation."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.0, (n, *shape)) * np.resize([0.0, 0.01, 0.1, 1.0], n)[:, None, None]
    mean, std = inputs if inputs is not None else (0.0, 1.0)
    return (z * std + mean).astype(np.float32)


def check_rounding(x: np.ndarray, grads: list[np.ndarray], copy: str) -> None:
    """Refuse a model whose outputs float32 rounding alone can move by more than :data:`TOLERANCE`.

    A fast path sums in another order than Keras' kernels (XLA: in another order for large shapes
    than for small ones too), so each input carries a different last-bit error, moved into the output
    by the model's sensitivity to it. Bound, per window and output: sum over inputs of
    |d output / d input| x |input| x float32 epsilon (``grads``: d output_d / d x for each output d,
    on the windows ``x`` of :func:`near_mean_windows`). A test model fitted to a nearly constant
    feature (weights ~2e5) has a bound of 2.3e-2, and its XLA and Keras embeddings did differ by
    1.9e-2 at 256 windows and up (3e-8 below): an event would depend on the batch its window fell in.
    The shipped model's bound is 3-6e-6 (measured difference: 7e-7)."""
    ax = np.abs(x)
    bound = max(float((np.abs(g) * ax).sum(axis=(1, 2)).max()) for g in grads)
    bound *= float(np.finfo(np.float32).eps)
    if not bound <= TOLERANCE:
        raise CompileError(f"the model is too sensitive to float32 rounding for a {copy} to match "
                           f"Keras within {TOLERANCE:g} (bound {bound:.1e})")


class CompiledEncoder:
    """A Keras encoder's forward pass, XLA-compiled per bucket; numpy (N, T, F) float32 in and out.

    Given the artifact's ``features``, also the derivation before it (:meth:`embed_raw`): raw windows
    in, embeddings and model inputs out, so the daemon's main thread derives nothing (numpy's ~30
    operations per batch each gave the GIL away and waited to get it back). Each of its shapes is
    checked on :func:`raw_probe_windows` against numpy's :func:`~netsiam.features.derive` followed by
    Keras, the embeddings within :data:`TOLERANCE` and the inputs within float32 rounding;
    :attr:`derives` turns False if one fails (the caller then derives in numpy).
    """

    def __init__(self, model: Any, costs: dict[int, float] | None = None,
                 inputs: Inputs | None = None, features: tuple[str, ...] | None = None) -> None:
        import tensorflow as tf

        self._tf = tf
        self.model = model
        self.costs = dict(costs or COSTS_MS)
        self.buckets = tuple(sorted(self.costs))
        self.shape = tuple(int(d) for d in model.input_shape[1:])   # (T, F)
        self._call = tf.function(lambda x: model(x, training=False), jit_compile=True)
        self._fns: dict[int, Callable[[Any], Any]] = {}
        self.features = features
        self.derives = features is not None and len(features) == self.shape[1]
        self._call_raw = tf.function(self._forward_raw, jit_compile=True)
        self._raw_fns: dict[int, Callable[[Any], Any]] = {}
        self._conditioned = False
        # (mean, std) per feature of the model's inputs (the manifest's normalisation): the check's
        # probe must look like real windows, where a badly conditioned model shows its rounding
        self._inputs = inputs
        self._logged = False
        self._lock = threading.Lock()

    def compile(self, bucket: int) -> Callable[[Any], Any]:
        """The compiled function for ``bucket`` windows (traced and compiled on first use)."""
        return self._cached(self._fns, bucket, self._compile)

    def _cached(self, fns: dict[int, Callable[[Any], Any]], bucket: int,
                build: Callable[[int], Callable[[Any], Any]]) -> Callable[[Any], Any]:
        """``fns[bucket]``, built once under the lock (a reload may warm up while the embed thread serves)."""
        fn = fns.get(bucket)
        if fn is None:
            with self._lock:
                fn = fns.get(bucket)
                if fn is None:
                    fn = fns[bucket] = build(bucket)
        return fn

    def _chunks(self, a: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(windows taken, bucket, chunk)`` per :func:`plan` chunk of ``a``, the last one padded with zero
        windows (the model treats each window alone: padding changes nothing else)."""
        i = 0
        for take, bucket in plan(len(a), self.costs):
            chunk = a[i:i + take]
            if take != bucket:
                chunk = np.concatenate([chunk, np.zeros((bucket - take, *a.shape[1:]), a.dtype)])
            yield take, bucket, chunk
            i += take

    def _compile(self, bucket: int) -> Callable[[Any], Any]:
        tf = self._tf
        probe = probe_windows(bucket, self.shape, self._inputs)
        try:
            fn = self._call.get_concrete_function(tf.TensorSpec((bucket, *self.shape), tf.float32))
            got = fn(tf.constant(probe)).numpy()  # the first call compiles
        except Exception as e:  # noqa: BLE001 - TF/XLA raise many types; any of them means plain Keras
            raise CompileError(f"XLA compilation failed for batch {bucket}: {type(e).__name__}: "
                               f"{str(e).strip()[:200]}") from e
        self._check_conditioning()
        # Every shape is checked (XLA orders a large shape's sums differently from a small one's).
        check_equal(got, np.asarray(self.model.predict_on_batch(probe)), "XLA", bucket)
        if not self._logged:
            self._logged = True
            log.info("encoder compiled by XLA (batch shapes %s, each checked within %g of Keras; "
                     "NETSIAM_XLA=0 turns it off)", ",".join(map(str, self.buckets)), TOLERANCE)
        return fn

    def _check_conditioning(self) -> None:
        """:func:`check_rounding` with TensorFlow's gradients of the Keras model (once)."""
        if self._conditioned:
            return
        tf = self._tf
        x = tf.constant(near_mean_windows(self.shape, self._inputs))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = self.model(x, training=False)
            outs = [y[:, d] for d in range(int(y.shape[-1]))]
        check_rounding(x.numpy(), [tape.gradient(o, x).numpy() for o in outs], "compiled copy")
        self._conditioned = True

    # -- raw windows in: the derivation inside the compiled call ----------------------------------
    def _forward_raw(self, raw: Any) -> tuple[Any, Any]:
        """(B, T, R) float64 raw windows -> ((B, D) embeddings, (B, T, F) float32 model inputs):
        :func:`~netsiam.features.derive`'s operations, in TensorFlow, then the model."""
        from types import SimpleNamespace

        tf = self._tf
        assert self.features is not None
        ops = SimpleNamespace(mean=lambda a, axis, keepdims: tf.reduce_mean(a, axis=axis, keepdims=keepdims),
                              log1p=tf.math.log1p, maximum=tf.maximum)
        x = tf.cast(tf.stack(feature_columns(raw, self.features, ops), axis=-1), tf.float32)
        return self.model(x, training=False), x

    def compile_raw(self, bucket: int) -> Callable[[Any], Any]:
        """The compiled raw-input function for ``bucket`` windows (CompileError: it does not serve)."""
        return self._cached(self._raw_fns, bucket, self._compile_raw)

    def _compile_raw(self, bucket: int) -> Callable[[Any], Any]:
        tf = self._tf
        if not self.derives:
            raise CompileError("the raw-input path is off for this model")
        assert self.features is not None
        try:
            probe = raw_probe_windows(bucket, self.shape[0])
            fn = self._call_raw.get_concrete_function(
                tf.TensorSpec((bucket, self.shape[0], len(RAW_METRICS)), tf.float64))
            emb, x = (t.numpy() for t in fn(tf.constant(probe)))
        except Exception as e:  # noqa: BLE001 - as _compile: any failure means numpy derives
            self.derives = False
            raise CompileError(f"XLA compilation of the derivation failed for batch {bucket}: "
                               f"{type(e).__name__}: {str(e).strip()[:200]}") from e
        self._check_conditioning()
        want_x = derive(probe, self.features)
        # numpy and XLA may sum a window's load in another order: at most a float32 rounding apart
        diff = float((np.abs(x - want_x) / np.maximum(np.abs(want_x), 1.0)).max())
        try:
            if not diff <= 4 * float(np.finfo(np.float32).eps):
                raise CompileError(f"XLA's derivation differs from numpy's by {diff:.1e} at batch {bucket}")
            check_equal(emb, np.asarray(self.model.predict_on_batch(want_x)), "XLA with derivation", bucket)
        except CompileError:
            self.derives = False
            raise
        return fn

    def embed_raw(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, T, R) raw windows -> ((N, D) embeddings, (N, T, F) model inputs), float32, one compiled
        call per :func:`plan` chunk; CompileError where this path does not serve the model."""
        tf = self._tf
        embs, xs = [], []
        for take, bucket, chunk in self._chunks(np.asarray(raw, np.float64)):
            emb, x = self.compile_raw(bucket)(tf.constant(chunk))
            embs.append(emb.numpy()[:take])
            xs.append(x.numpy()[:take])
        if not embs:
            return (np.zeros((0, int(self.model.output_shape[-1])), np.float32),
                    np.zeros((0, *self.shape), np.float32))
        if len(embs) == 1:
            return embs[0], xs[0]
        return np.concatenate(embs), np.concatenate(xs)

    def warm_up(self, buckets: tuple[int, ...] | None = None) -> None:
        """Compile ``buckets`` (default: all) now, not on first use."""
        for b in buckets or self.buckets:
            self.compile(b)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(N, T, F) float32 -> (N, D) float32, one compiled call per :func:`plan` chunk."""
        tf = self._tf
        out = [self.compile(bucket)(tf.constant(chunk)).numpy()[:take]
               for take, bucket, chunk in self._chunks(np.asarray(x, np.float32))]
        if not out:
            return np.zeros((0, int(self.model.output_shape[-1])), np.float32)
        return np.concatenate(out) if len(out) > 1 else out[0]


def compile_encoder(model: Any, inputs: tuple[np.ndarray, np.ndarray] | None = None,
                    features: tuple[str, ...] | None = None) -> CompiledEncoder | None:
    """A :class:`CompiledEncoder` for ``model`` (``inputs``: mean and std per feature, for its checks), or None (with the reason logged at debug) where the
    fast path does not apply: switched off, another Keras backend, or not a Keras model."""
    if not enabled():
        log.debug("compiled embedding off (NETSIAM_XLA)")
        return None
    try:
        import keras
    except ImportError:
        return None
    if keras.backend.backend() != "tensorflow":
        log.debug("compiled embedding needs the TensorFlow backend, not %s", keras.backend.backend())
        return None
    if not isinstance(model, keras.Model):
        return None
    return CompiledEncoder(model, inputs=inputs, features=features)
