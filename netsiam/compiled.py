"""The CPU fast path of :meth:`netsiam.serving.Artifact.embed`: the encoder compiled by XLA.

Under the TensorFlow backend the Keras model's forward pass is wrapped in
``tf.function(jit_compile=True)`` and traced for a few fixed batch shapes (:data:`BUCKETS`); a call
of any size is cut into bucket-sized chunks (:func:`plan`), the last one zero-padded. Measured on
the 2-core machine (bench/embed.py): a 1,024-window call costs about a third of Keras
``predict_on_batch``'s; a 1-window call a quarter. Keras' own ``compile(jit_compile=True)`` +
``predict_on_batch`` was as fast at 1,024 but 1.5x slower at batch 1 (its data adapter runs per
call), so the model's call is traced directly.

XLA needs static shapes: each bucket is compiled once (~1 s on 2 busy cores), on first use, under
a lock (the daemon embeds on a worker thread while a reload may warm up another artifact). The
first compiled bucket is checked against ``predict_on_batch`` on the same input (within
:data:`TOLERANCE`); a backend other than TensorFlow, a model that is not a Keras model, a failed
compilation or a failed check all make :func:`compile_encoder` / :meth:`CompiledEncoder.embed`
give up, and the caller serves through plain Keras instead. ``NETSIAM_XLA=0`` in the environment
turns the fast path off for every command (``detect`` and ``evaluate`` alike, so they embed the same way).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["BUCKETS", "CALL_COST", "TOLERANCE", "CompileError", "CompiledEncoder", "compile_encoder",
           "enabled", "plan"]

log = logging.getLogger("netsiam.serving")

# Powers of 4: 6 compilations cover 1..1,024, and plan() splits a size between buckets instead of
# padding it 4x. Chunks beyond the largest bucket are cut into 1,024s: at 4,096 one call is no
# faster per window than four (measured: 85 vs 4 x 22 ms).
BUCKETS: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
# One more compiled call costs about as much as this many windows (0.3 ms per call, ~20 us per
# window at 1,024 on the 2-core machine).
CALL_COST = 16
TOLERANCE = 1e-5  # the compiled model must agree with Keras within this (max absolute difference)


class CompileError(RuntimeError):
    """The compiled path cannot serve this model: use plain Keras."""


def enabled() -> bool:
    """False when ``NETSIAM_XLA`` is set to 0/false/no/off (the operator's kill switch)."""
    return os.environ.get("NETSIAM_XLA", "1").strip().lower() not in ("0", "false", "no", "off")


def plan(n: int, buckets: tuple[int, ...] = BUCKETS, call_cost: int = CALL_COST) -> list[tuple[int, int]]:
    """Chunks ``(windows taken, bucket)`` covering ``n`` windows at the least cost ``sum(call_cost +
    bucket)``: full largest buckets first, then the cheapest split of the rest (e.g. 300 ->
    256 + 64 padded, not 1,024; 520 -> 256 + 256 + 16 padded). Only the last chunk is padded."""
    big = buckets[-1]
    out = [(big, big)] * (n // big)
    out += _best_rest(n % big, buckets, call_cost)[1]
    return out


@functools.lru_cache(maxsize=4096)
def _best_rest(n: int, buckets: tuple[int, ...], call_cost: int) -> tuple[int, list[tuple[int, int]]]:
    """(cost, chunks) for ``n`` < the largest bucket; exact (memoised recursion over at most 1,024 sizes)."""
    if n == 0:
        return 0, []
    best: tuple[int, list[tuple[int, int]]] | None = None
    for b in reversed(buckets):  # on a tie, the larger chunk first (fewer calls)
        if b >= n:
            cand = (call_cost + b, [(n, b)])
        else:
            rest_cost, rest = _best_rest(n - b, buckets, call_cost)
            cand = (call_cost + b + rest_cost, [(b, b), *rest])
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None  # buckets is never empty
    return best


class CompiledEncoder:
    """A Keras encoder's forward pass, XLA-compiled per bucket; numpy (N, T, F) float32 in and out."""

    def __init__(self, model: Any, buckets: tuple[int, ...] = BUCKETS) -> None:
        import tensorflow as tf

        self._tf = tf
        self.model = model
        self.buckets = buckets
        self.shape = tuple(int(d) for d in model.input_shape[1:])   # (T, F)
        self._call = tf.function(lambda x: model(x, training=False), jit_compile=True)
        self._fns: dict[int, Callable[[Any], Any]] = {}
        self._checked = False
        self._lock = threading.Lock()

    def compile(self, bucket: int) -> Callable[[Any], Any]:
        """The compiled function for ``bucket`` windows (traced and compiled on first use)."""
        fn = self._fns.get(bucket)
        if fn is not None:
            return fn
        with self._lock:
            fn = self._fns.get(bucket)
            if fn is None:
                fn = self._compile(bucket)
                self._fns[bucket] = fn
        return fn

    def _compile(self, bucket: int) -> Callable[[Any], Any]:
        tf = self._tf
        try:
            fn = self._call.get_concrete_function(tf.TensorSpec((bucket, *self.shape), tf.float32))
            # the first call compiles; a deterministic probe doubles as the equality check
            probe = np.random.default_rng(bucket).normal(0.0, 1.0, (bucket, *self.shape)).astype(np.float32)
            got = fn(tf.constant(probe)).numpy()
        except Exception as e:  # noqa: BLE001 - TF/XLA raise many types; any of them means plain Keras
            raise CompileError(f"XLA compilation failed for batch {bucket}: {type(e).__name__}: "
                               f"{str(e).strip()[:200]}") from e
        if not self._checked:
            want = np.asarray(self.model.predict_on_batch(probe))
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
            if not diff <= TOLERANCE:
                raise CompileError(f"XLA output differs from Keras by {diff:.2e} (> {TOLERANCE:g})")
            self._checked = True
        return fn

    def warm_up(self, buckets: tuple[int, ...] | None = None) -> None:
        """Compile ``buckets`` (default: all) now, not on first use."""
        for b in buckets or self.buckets:
            self.compile(b)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(N, T, F) float32 -> (N, D) float32, one compiled call per :func:`plan` chunk."""
        tf = self._tf
        out, i = [], 0
        for take, bucket in plan(len(x), self.buckets):
            chunk = x[i:i + take]
            if take != bucket:  # zero rows: the LSTM treats each window alone, padding changes nothing else
                chunk = np.concatenate([chunk, np.zeros((bucket - take, *self.shape), np.float32)])
            out.append(self.compile(bucket)(tf.constant(chunk)).numpy()[:take])
            i += take
        return np.concatenate(out) if len(out) > 1 else out[0]


def compile_encoder(model: Any) -> CompiledEncoder | None:
    """A :class:`CompiledEncoder` for ``model``, or None (with the reason logged at debug) where the
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
    return CompiledEncoder(model)
