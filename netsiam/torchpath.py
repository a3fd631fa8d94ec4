"""The torch fast path of :meth:`netsiam.serving.Artifact.embed`: the encoder's weights in torch's own LSTM.

Under ``KERAS_BACKEND=torch`` (a GPU host without TensorFlow) Keras runs the LSTM one time step at a
time; torch's ``nn.LSTM`` runs the whole sequence in one kernel (cuDNN on a GPU, oneDNN on a CPU).
:func:`torch_encoder` rebuilds the artifact's encoder from torch modules with the same weights
(Normalization -> LSTM -> Dense layers; Keras' LSTM gates i, f, c, o are torch's i, f, g, o, its one
bias is torch's input bias with a zero recurrent bias). The ``.keras`` file and artifact do not change.

* **On a CUDA GPU:** batches are cut into a few fixed shapes (:data:`CUDA_BUCKETS`, the last chunk
  zero-padded as on the XLA path: windows never mix in the LSTM); per shape, pinned host buffers, an
  asynchronous copy in, the forward pass replayed from a CUDA graph (captured once; eager cuDNN where
  capture fails), an asynchronous copy out, one synchronisation.
* **On a CPU:** the torch modules on the numpy batch (zero-copy), any batch size.
* **Equal to Keras:** at start, outputs are compared with Keras ``predict_on_batch`` on windows drawn
  from the model's input statistics (every CUDA shape; on a CPU sizes 1, 7, 64, 1,024), within
  :data:`~netsiam.compiled.TOLERANCE`; before that a model float32 rounding alone could move by more
  than that is refused (the bound :mod:`netsiam.compiled` uses, by torch autograd). Any failure, an
  encoder of another structure, or ``NETSIAM_TORCH_FAST=0`` leaves the artifact on plain Keras.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from typing import Any

import numpy as np

from netsiam.compiled import (
    TOLERANCE,
    CompileError,
    Inputs,
    check_equal,
    check_rounding,
    near_mean_windows,
    plan,
    probe_windows,
)

__all__ = ["CPU_CHECK_SIZES", "CUDA_BUCKETS", "CUDA_COSTS", "TorchEncoder", "enabled", "torch_encoder"]

log = logging.getLogger("netsiam.serving")

CUDA_BUCKETS: tuple[int, ...] = (16, 128, 1024, 8192)
# Relative cost per call of each shape for plan(): a call's launch and synchronisation dominate a small
# batch on a GPU. Not measured (no GPU was lent when this was written): a guess that only has to rank
# "one padded call" against "several small ones".
CUDA_COSTS: dict[int, float] = {16: 1.0, 128: 1.1, 1024: 1.6, 8192: 4.0}
CPU_CHECK_SIZES: tuple[int, ...] = (1, 7, 64, 1024)
_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")
# One GPU user at a time in this process: a capture (a reload's warm-up, on its own thread) must not
# run beside another artifact's replay (the embed thread), whose allocations would break it.
_GPU_LOCK = threading.Lock()
_graphs_ok = True   # False after a failed capture: later shapes run eagerly rather than try (and leak) again


def enabled() -> bool:
    """False when ``NETSIAM_TORCH_FAST`` is 0/false/no/off (the operator's switch)."""
    return os.environ.get("NETSIAM_TORCH_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def _host(v: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(v), np.float32)   # variables may live on the GPU


def _layers(model: Any) -> tuple[Any, Any, list[Any]]:
    """(Normalization, LSTM, [Dense, ...]) of a netsiam-shaped encoder, or CompileError naming what differs."""
    import keras

    kl = keras.layers
    body = [la for la in model.layers if not isinstance(la, kl.InputLayer | kl.Dropout)]  # dropout: identity here
    if len(body) < 3 or not isinstance(body[0], kl.Normalization) or not isinstance(body[1], kl.LSTM):
        raise CompileError("not a Normalization -> LSTM -> Dense encoder")
    norm, lstm, dense = body[0], body[1], body[2:]
    if not all(isinstance(d, kl.Dense) and d.use_bias and d.activation.__name__ in _ACTIVATIONS for d in dense):
        raise CompileError("layers after the LSTM must be Dense with a bias and a plain activation")
    if (lstm.return_sequences or lstm.go_backwards or not lstm.use_bias or lstm.activation.__name__ != "tanh"
            or lstm.recurrent_activation.__name__ != "sigmoid"):
        raise CompileError("the LSTM is not a plain one (tanh/sigmoid, bias, last state only)")
    if tuple(norm.axis) not in ((-1,), (2,)):
        raise CompileError("the Normalization is not per feature")
    return norm, lstm, dense


def _twin(model: Any, torch: Any) -> Any:
    """The encoder rebuilt from torch modules with its weights: (B, T, F) -> (B, D)."""
    norm, lstm, dense = _layers(model)
    mean = _host(norm.mean).reshape(-1)
    std = np.maximum(np.sqrt(_host(norm.variance).reshape(-1)), 1e-7)   # Keras: max(sqrt(var), epsilon)
    kernel, recurrent, bias = (_host(w) for w in (lstm.cell.kernel, lstm.cell.recurrent_kernel, lstm.cell.bias))
    nn = torch.nn

    class Twin(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean.copy()))
            self.register_buffer("std", torch.from_numpy(std.copy()))
            self.lstm = nn.LSTM(kernel.shape[0], recurrent.shape[0], batch_first=True)
            self.dense = nn.ModuleList(nn.Linear(*_host(d.kernel).shape) for d in dense)
            self.acts = [d.activation.__name__ for d in dense]
            with torch.no_grad():
                self.lstm.weight_ih_l0.copy_(torch.from_numpy(kernel.T.copy()))
                self.lstm.weight_hh_l0.copy_(torch.from_numpy(recurrent.T.copy()))
                self.lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
                self.lstm.bias_hh_l0.zero_()
                for mod, d in zip(self.dense, dense, strict=True):
                    mod.weight.copy_(torch.from_numpy(_host(d.kernel).T.copy()))
                    mod.bias.copy_(torch.from_numpy(_host(d.bias)))

        def forward(self, x: Any) -> Any:
            _, (h, _) = self.lstm((x - self.mean) / self.std)   # (B, T, F) -> (1, B, U)
            y = h[-1]
            for mod, act in zip(self.dense, self.acts, strict=True):
                y = mod(y)
                y = y if act == "linear" else getattr(torch, act)(y)
            return y                                           # (B, D)

    return Twin()


class TorchEncoder:
    """The encoder in torch modules on one device; numpy (N, T, F) float32 in and (N, D) out."""

    def __init__(self, model: Any, inputs: Inputs | None = None,
                 device: str | None = None, bucketed: bool | None = None) -> None:
        """``bucketed`` (default: on a GPU): fixed shapes through :class:`_Slot`; on a CPU that runs the
        GPU path's cutting, padding and buffers without CUDA (what the tests can check here)."""
        import torch

        self.torch = torch
        self.model = model
        self.shape = tuple(int(d) for d in model.input_shape[1:])     # (T, F)
        self.dim = int(model.output_shape[-1])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._inputs = inputs
        cpu_net = _twin(model, torch).eval()
        self._check_conditioning(cpu_net)
        self.net = cpu_net.to(self.device)
        if self.device.type == "cuda":
            # cuDNN's RNN computes in TF32 by default (2^-11 rounding, outputs ~1e-4 off float32): full
            # float32, as the 1e-5 checks and the rounding bound assume. Process-wide, Keras' own included.
            torch.backends.cudnn.allow_tf32 = False
            self.net.lstm.flatten_parameters()
        bucketed = self.device.type == "cuda" if bucketed is None else bucketed
        self.buckets = CUDA_BUCKETS if bucketed else ()
        self._slots: dict[int, _Slot] = {}   # built under _GPU_LOCK, on first use (the checks below use them all)
        for n in self.buckets or CPU_CHECK_SIZES:
            self._check(n)
        log.info("encoder served by torch's LSTM on %s (checked within %g of Keras; NETSIAM_TORCH_FAST=0 "
                 "turns it off)", self.device, TOLERANCE)

    def _check(self, n: int) -> None:
        probe = probe_windows(n, self.shape, self._inputs)
        check_equal(self.embed(probe), np.asarray(self.model.predict_on_batch(probe)), "torch", n)

    def _check_conditioning(self, net: Any) -> None:
        """:func:`~netsiam.compiled.check_rounding` with torch autograd on (a copy of) ``net``."""
        torch = self.torch
        x = torch.tensor(near_mean_windows(self.shape, self._inputs), requires_grad=True)
        y = copy.deepcopy(net)(x)
        # windows are independent: the gradient of an output's sum over windows is per window
        grads = [torch.autograd.grad(y[:, d].sum(), x, retain_graph=True)[0].numpy() for d in range(y.shape[-1])]
        check_rounding(x.detach().numpy(), grads, "torch copy")

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(N, T, F) float32 -> (N, D) float32."""
        torch = self.torch
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not len(x):
            return np.zeros((0, self.dim), np.float32)
        try:
            if not self.buckets:
                with torch.inference_mode():
                    return self.net(torch.from_numpy(x)).numpy()
            out, i = [], 0
            with _GPU_LOCK:
                for take, bucket in plan(len(x), CUDA_COSTS):
                    out.append(self._slot(bucket).run(x[i:i + take]))
                    i += take
        except RuntimeError as e:   # torch's errors, CUDA out of memory included
            raise CompileError(f"torch embedding failed: {type(e).__name__}: {str(e).strip()[:200]}") from e
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _slot(self, bucket: int) -> _Slot:
        slot = self._slots.get(bucket)
        if slot is None:
            slot = self._slots[bucket] = _Slot(self.net, bucket, self.shape, self.dim, self.torch)
        return slot


class _Slot:
    """One batch shape: host and device buffers, the forward pass; on a GPU the host buffers are pinned
    and the pass a CUDA graph."""

    def __init__(self, net: Any, bucket: int, shape: tuple[int, ...], dim: int, torch: Any) -> None:
        dev = next(net.parameters()).device
        self.cuda = dev.type == "cuda"
        self.torch, self.net, self.bucket = torch, net, bucket
        self.host_in = torch.zeros((bucket, *shape), dtype=torch.float32)
        self.host_out = torch.zeros((bucket, dim), dtype=torch.float32)
        self.dev_in = torch.zeros((bucket, *shape), dtype=torch.float32, device=dev)
        self.graph: Any = None
        self.dev_out: Any = None
        if self.cuda:
            self.host_in, self.host_out = self.host_in.pin_memory(), self.host_out.pin_memory()
            self._capture()

    def _capture(self) -> None:
        """Warm up on a side stream (cuDNN and cuBLAS pick their algorithms), then capture the forward
        pass on it; on failure restore the stream and run eagerly (a failed capture leaves the graph's
        allocator state undefined, so no later shape tries again)."""
        global _graphs_ok
        torch, net = self.torch, self.net
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):
                self.dev_out = net(self.dev_in)
        torch.cuda.current_stream().wait_stream(side)
        if not _graphs_ok:
            return
        prev = torch.cuda.current_stream()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                self.dev_out = net(self.dev_in)
            self.graph = graph
        except RuntimeError as e:   # the same buffers, eager cuDNN
            torch.cuda.set_stream(prev)
            self.graph, _graphs_ok = None, False
            log.warning("CUDA graph capture failed (batch %d): eager cuDNN from now on: %s", self.bucket,
                        str(e)[:160])
            torch.cuda.synchronize()

    def run(self, chunk: np.ndarray) -> np.ndarray:
        torch, n = self.torch, len(chunk)
        self.host_in[:n].copy_(torch.from_numpy(chunk))
        if n < self.bucket:
            self.host_in[n:].zero_()
        with torch.inference_mode():
            self.dev_in.copy_(self.host_in, non_blocking=self.cuda)
            if self.graph is not None:
                self.graph.replay()
            else:
                self.dev_out = self.net(self.dev_in)
            self.host_out.copy_(self.dev_out, non_blocking=self.cuda)
        if self.cuda:
            torch.cuda.current_stream().synchronize()
        return self.host_out[:n].numpy().copy()


def torch_encoder(model: Any, inputs: Inputs | None = None) -> TorchEncoder | None:
    """A :class:`TorchEncoder` for ``model`` under the torch backend, or None (the reason logged) where it
    does not apply or fails its checks: the caller serves through plain Keras."""
    if not enabled():
        log.debug("torch fast path off (NETSIAM_TORCH_FAST)")
        return None
    try:
        import keras
    except ImportError:
        return None
    if keras.backend.backend() != "torch" or not isinstance(model, keras.Model):
        return None
    try:
        return TorchEncoder(model, inputs)
    except CompileError as e:
        log.warning("torch fast path off for this model, serving through Keras: %s", e)
    except Exception as e:  # noqa: BLE001 - torch raises many types; any of them means plain Keras
        log.warning("torch fast path off for this model, serving through Keras: %s: %s", type(e).__name__,
                    str(e).strip()[:200])
    return None
