"""Serving, shared by trainer and detector: load a model artifact, embed windows, classify them.

An artifact is a directory with ``encoder.keras``, ``prototypes.json`` and ``manifest.json``. The
manifest is written last and records the SHA-256 of the other two files, so a reader never mistakes
a half-written or tampered artifact for a good one. Loading uses Keras safe mode (no Lambda layers or
pickled code) and checks the manifest against the model's shapes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from netsiam.compiled import BUCKETS, CompiledEncoder, CompileError, compile_encoder
from netsiam.config import WindowConfig
from netsiam.errors import NetsiamError
from netsiam.features import FEATURES, RAW_METRICS, required_metrics
from netsiam.schemas.classes import UNKNOWN
from netsiam.slowanswers import MANIFEST_KEY as SLOW_KEY
from netsiam.torchpath import TorchEncoder, torch_encoder
from netsiam.traceio import atomic_write_bytes

__all__ = [
    "ENCODER_FILE",
    "FORMAT",
    "MANIFEST_FILE",
    "PROTOTYPES_FILE",
    "Artifact",
    "Prototypes",
    "artifact_version",
    "default_model_path",
    "load_artifact",
    "trained_classes",
]

FORMAT = 1
ENCODER_FILE, PROTOTYPES_FILE, MANIFEST_FILE = "encoder.keras", "prototypes.json", "manifest.json"
log = logging.getLogger("netsiam.serving")


def default_model_path() -> Path:
    """The small model shipped as package data (``make model`` regenerates it)."""
    path = resources.files("netsiam") / "default_model"
    if not isinstance(path, Path):  # e.g. a zipped install: Keras needs real files
        raise NetsiamError(f"the shipped model is not on the file system ({path}); pass --model DIR")
    return path


def artifact_version(manifest: dict[str, Any], prototypes: Prototypes) -> str:
    """:attr:`Artifact.version` from a manifest and prototypes alone (no encoder needed to name a version)."""
    ph = hashlib.sha256(orjson.dumps(prototypes.to_json())).hexdigest()[:8]
    return f"{manifest['version']}+p{ph}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Prototypes:
    """Per class: prototype point(s) (k, D), a distance threshold, and how many windows support it."""

    classes: list[str] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)   # each (k, D)
    thresholds: list[float] = field(default_factory=list)
    support: list[int] = field(default_factory=list)
    method: str = "median"

    def set(self, name: str, points: np.ndarray, threshold: float, support: int) -> None:
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if name in self.classes:
            i = self.classes.index(name)
            self.points[i], self.thresholds[i], self.support[i] = pts, float(threshold), int(support)
        else:
            self.classes.append(name)
            self.points.append(pts)
            self.thresholds.append(float(threshold))
            self.support.append(int(support))

    def remove(self, name: str) -> None:
        if name not in self.classes:
            raise NetsiamError(f"no class {name!r} (classes: {', '.join(self.classes)})")
        i = self.classes.index(name)
        for lst in (self.classes, self.points, self.thresholds, self.support):
            del lst[i]

    def distances(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C): Euclidean distance to each class's nearest prototype point."""
        emb = np.asarray(emb, dtype=np.float64)
        out = np.empty((emb.shape[0], len(self.classes)))
        for j, pts in enumerate(self.points):
            d = np.sqrt(((emb[:, None, :] - pts[None, :, :]) ** 2).sum(-1))  # (N, k)
            out[:, j] = d.min(axis=1)
        return out

    def nearest(self, dist: np.ndarray, among: Collection[str] | None = None) -> np.ndarray:
        """(N, C) distances -> (N,) the nearest class of each window, thresholds ignored (``among``: of
        these classes only, if any of them is here)."""
        dist = np.asarray(dist, dtype=np.float64)
        if among is not None:
            keep = np.isin(np.asarray(self.classes, dtype=object), list(among))
            if keep.any() and not keep.all():
                dist = np.where(keep[None, :], dist, np.inf)
        return np.asarray(self.classes, dtype=object)[dist.argmin(axis=1)]

    def within(self, dist: np.ndarray) -> np.ndarray:
        """(N, C) distances -> (N,) frozensets: the classes whose threshold each window is within."""
        inside = np.asarray(dist) <= np.asarray(self.thresholds)[None, :]
        codes = inside.astype(np.int64) @ (1 << np.arange(inside.shape[1], dtype=np.int64))   # (N,) bit sets
        uniq, inv = np.unique(codes, return_inverse=True)
        sets = np.empty(len(uniq), dtype=object)   # a few distinct patterns: one frozenset each, not one a window
        sets[:] = [frozenset(c for j, c in enumerate(self.classes) if int(u) >> j & 1) for u in uniq]
        return sets[inv.reshape(-1)]

    def classify(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, D) -> (class names (N,), distance to the chosen class (N,), all distances (N, C)).

        Nearest prototype wins; a window beyond that class's threshold is ``unknown``.
        """
        if not self.classes:
            raise NetsiamError("the artifact has no prototypes")
        dist = self.distances(emb)
        j = dist.argmin(axis=1)
        nearest = dist[np.arange(len(j)), j]
        names = np.array(self.classes, dtype=object)[j]
        names[nearest > np.asarray(self.thresholds)[j]] = UNKNOWN
        return names, nearest, dist

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "classes": {
                c: {"points": p.tolist(), "threshold": t, "support": s}
                for c, p, t, s in zip(self.classes, self.points, self.thresholds, self.support, strict=True)
            },
        }

    @classmethod
    def from_json(cls, obj: Any, dim: int | None = None) -> Prototypes:
        """``dim``: the embedding dimension every point must have (None: the first class's)."""
        try:
            protos = cls(method=str(obj.get("method", "median")))
            for name, entry in obj["classes"].items():
                pts = np.atleast_2d(np.asarray(entry["points"], dtype=np.float64))
                dim = pts.shape[1] if dim is None and pts.ndim == 2 else dim
                if pts.ndim != 2 or pts.shape[1] != dim or not np.all(np.isfinite(pts)):
                    raise ValueError(f"class {name!r}: points must be finite (k, {dim})")
                thr = float(entry["threshold"])
                if not np.isfinite(thr) or thr < 0:
                    raise ValueError(f"class {name!r}: bad threshold {thr}")
                protos.set(str(name), pts, thr, int(entry["support"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise NetsiamError(f"{PROTOTYPES_FILE}: invalid ({e})") from None
        return protos


def trained_classes(protos: Prototypes, manifest: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The classes the encoder was trained on (the manifest's ``classes``) that ``protos`` still hold; the
    others were added later from a few windows. Without that list, every class."""
    mine = (manifest or {}).get("classes")
    trained = tuple(c for c in protos.classes if not isinstance(mine, list) or c in mine)
    return trained or tuple(protos.classes)


class Artifact:
    """A loaded artifact: encoder + prototypes + manifest, ready to embed and classify."""

    def __init__(self, encoder: Any, prototypes: Prototypes, manifest: dict[str, Any], path: Path | None = None,
                 compiled: bool = True):
        self.encoder = encoder
        # fast path (netsiam.compiled: XLA; netsiam.torchpath: torch's LSTM), built on first embed;
        # None once it is known not to apply
        self._compiled: CompiledEncoder | TorchEncoder | None = None
        self._try_compiled = compiled
        self.prototypes = prototypes
        self.manifest = manifest
        self.path = path
        self.features: tuple[str, ...] = tuple(manifest["features"])
        self.window = WindowConfig(**manifest["window"])
        self.required: tuple[str, ...] = required_metrics(self.features)

    @property
    def version(self) -> str:
        """Model version plus a short hash of the prototypes (adding a class changes it)."""
        return artifact_version(self.manifest, self.prototypes)

    def embed(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(N, T, F) derived features -> (N, D) embeddings, float32.

        Under TensorFlow, the XLA-compiled encoder (:mod:`netsiam.compiled`: a few fixed batch
        shapes, equal to Keras within 1e-5); under torch, torch's own LSTM (:mod:`netsiam.torchpath`,
        cuDNN and CUDA graphs on a GPU, equally checked); elsewhere, or if it fails, plain Keras
        (:meth:`embed_plain`). ``batch_size`` bounds one plain Keras call; the compiled path cuts
        calls by its own shapes.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (self.window.length, len(self.features)):
            raise ValueError(f"windows must be (N, {self.window.length}, {len(self.features)}), got {x.shape}")
        fast = self.compiled_encoder() if len(x) else None
        if fast is not None:
            try:
                return fast.embed(x)
            except CompileError as e:
                log.warning("fast embedding path off for model %s, serving through Keras: %s",
                            self.manifest.get("version", "?"), e)
                self._compiled, self._try_compiled = None, False
        return self.embed_plain(x, batch_size)

    def compiled_encoder(self) -> CompiledEncoder | TorchEncoder | None:
        """The fast path for this artifact's encoder (XLA under TensorFlow, torch's LSTM under torch),
        or None where none applies."""
        if self._compiled is None and self._try_compiled:
            stats = self._input_stats()
            self._compiled = (compile_encoder(self.encoder, stats, self.features)
                              or torch_encoder(self.encoder, stats))
            self._try_compiled = self._compiled is not None
        return self._compiled

    def _input_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) per feature from the manifest: what the fast path's checks feed the model."""
        norm = self.manifest.get("normalisation") or {}
        try:
            mean, std = np.asarray(norm["mean"], np.float64), np.asarray(norm["std"], np.float64)
        except (KeyError, TypeError, ValueError):
            return None
        return (mean, std) if mean.shape == std.shape == (len(self.features),) else None

    def warm_up(self, sizes: tuple[int, ...] = (1, 2, *BUCKETS), raw: bool = False) -> None:
        """Compile (or trace) the encoder for these batch sizes now, so the first batches do not
        wait for it (~0.6 s a shape under XLA on 2 busy cores; 1 and 2 trace plain Keras' shapes).
        ``raw``: the path the daemon takes, :meth:`embed_raw` where it serves (else :meth:`embed`)."""
        for n in sizes:
            if not (raw and self.embed_raw(np.zeros((n, self.window.length, len(RAW_METRICS)))) is not None):
                self.embed(np.zeros((n, self.window.length, len(self.features)), np.float32))

    def derives_when_embedding(self) -> bool:
        """Does :meth:`embed_raw` serve this artifact (so far: the XLA path, checked per shape)?"""
        fast = self.compiled_encoder()
        return isinstance(fast, CompiledEncoder) and fast.derives

    def embed_raw(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(N, T, R) raw windows -> ((N, D) embeddings, (N, T, F) model inputs), the derivation and the
        encoder in one XLA call (:meth:`CompiledEncoder.embed_raw`); None where that does not serve
        (not TensorFlow, a check failed: logged once), and the caller derives and calls :meth:`embed`."""
        fast = self.compiled_encoder()
        if not isinstance(fast, CompiledEncoder) or not fast.derives or not len(raw):
            return None
        try:
            return fast.embed_raw(raw)
        except CompileError as e:
            fast.derives = False
            log.warning("deriving inside the compiled encoder is off for model %s, numpy derives: %s",
                        self.manifest.get("version", "?"), e)
            return None

    def embed_plain(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """:meth:`embed` through plain Keras: the compiled predict step (``predict_on_batch``, ~60x
        faster than an eager call at batch 1 under TensorFlow), each chunk padded to a power of two
        so a stream of odd batch sizes compiles a handful of shapes instead of one per size.
        """
        x = np.asarray(x, dtype=np.float32)
        out = []
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size]
            n = len(chunk)
            padded = 1 << max(0, (n - 1).bit_length())
            if padded != n:
                chunk = np.concatenate([chunk, np.zeros((padded - n,) + chunk.shape[1:], np.float32)])
            out.append(np.asarray(self.encoder.predict_on_batch(chunk))[:n])
        if not out:
            return np.zeros((0, int(self.encoder.output_shape[-1])), np.float32)
        return np.concatenate(out).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Write encoder and prototypes, then the manifest (with their hashes) last."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        tmp = p / f".{ENCODER_FILE}.tmp.keras"
        self.encoder.save(tmp)
        tmp.replace(p / ENCODER_FILE)
        self.save_prototypes(p)
        self.path = p

    def save_prototypes(self, path: str | Path | None = None) -> None:
        p = Path(path or self.path or ".")
        atomic_write_bytes(p / PROTOTYPES_FILE, orjson.dumps(self.prototypes.to_json(), option=orjson.OPT_INDENT_2))
        self.manifest["files"] = {ENCODER_FILE: _sha256(p / ENCODER_FILE),
                                  PROTOTYPES_FILE: _sha256(p / PROTOTYPES_FILE)}
        self.manifest.setdefault("created_at", time.time())
        atomic_write_bytes(p / MANIFEST_FILE, orjson.dumps(self.manifest, option=orjson.OPT_INDENT_2
                                                           | orjson.OPT_SERIALIZE_NUMPY))


def _parse_json(data: bytes, path: Path) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise NetsiamError(f"{path}: corrupt JSON ({e})") from None


def _read_json(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NetsiamError(f"not a model artifact: {path} is missing") from None
    return _parse_json(data, path)


def _check_manifest_types(manifest: dict[str, Any], where: Path) -> None:
    """The manifest's values every load and every batch reads, of the right type (a hand-edited manifest is a
    data error here, not an internal one later in the daemon's loop). Ranges, signatures and marks need no
    check: a malformed entry there is skipped where it is read (:mod:`netsiam.evidence`)."""
    files, feats = manifest["files"], manifest["features"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise NetsiamError(f"{where}: 'files' must map each file name to its SHA-256")
    if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
        raise NetsiamError(f"{where}: 'features' must be a list of feature names")
    taught = manifest.get(SLOW_KEY)   # what feedback taught
    if taught is not None:
        up_to = taught.get("normal_up_to", 0.0) if isinstance(taught, dict) else None
        if isinstance(up_to, bool) or not isinstance(up_to, int | float) or not 0 <= up_to < math.inf:
            raise NetsiamError(f"{where}: '{SLOW_KEY}' must be {{\"normal_up_to\": a finite factor >= 0}}")


def load_artifact(path: str | Path | None = None, reuse: Artifact | None = None) -> Artifact:
    """Load and validate an artifact directory (default: the shipped model).

    ``reuse``: an artifact already loaded; if its encoder file has the same hash, its encoder (and
    compiled fast path) is taken instead of loading and compiling another: a prototypes-only change
    (feedback, rollback, ``prototypes add``) then reloads in milliseconds, not seconds.
    """
    import keras

    p = Path(path) if path else default_model_path()
    if not p.is_dir():
        raise NetsiamError(f"model artifact not found: {p}" + (" (a file; a model is a directory)" if p.exists() else ""))
    manifest = _read_json(p / MANIFEST_FILE)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NetsiamError(f"{p / MANIFEST_FILE}: not a netsiam manifest (format {FORMAT} expected)")
    for key in ("version", "features", "window", "normalisation", "files"):
        if key not in manifest:
            raise NetsiamError(f"{p / MANIFEST_FILE}: missing {key!r}")
    _check_manifest_types(manifest, p / MANIFEST_FILE)
    unknown = [f for f in manifest["features"] if f not in FEATURES]
    if unknown:
        raise NetsiamError(f"{p / MANIFEST_FILE}: unknown feature(s) {unknown}")
    # Each file is read once, hashed, and parsed from those same bytes: a save running beside us can
    # replace a file between a hash check and a second read, which would pair one version's manifest
    # with another's encoder.
    verified: dict[str, bytes] = {}
    for name, digest in manifest["files"].items():
        try:
            data = (p / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NetsiamError(f"model artifact {p}: {name} is missing") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise NetsiamError(f"model artifact {p}: {name} does not match the manifest (truncated or modified)")
        verified[name] = data
    for name in (ENCODER_FILE, PROTOTYPES_FILE):
        if name not in verified:
            raise NetsiamError(f"{p / MANIFEST_FILE}: files lists no hash for {name}")
    try:
        window = WindowConfig(**manifest["window"])
    except (TypeError, NetsiamError) as e:
        raise NetsiamError(f"{p / MANIFEST_FILE}: bad window ({e})") from None
    if reuse is not None and reuse.manifest.get("files", {}).get(ENCODER_FILE) == manifest["files"][ENCODER_FILE] \
            and reuse.window == window and reuse.features == tuple(manifest["features"]):
        protos = Prototypes.from_json(_parse_json(verified[PROTOTYPES_FILE], p / PROTOTYPES_FILE),
                                      dim=int(reuse.encoder.output_shape[-1]))
        art = Artifact(reuse.encoder, protos, manifest, p)
        art._compiled, art._try_compiled = reuse._compiled, reuse._try_compiled
        return art
    try:
        with tempfile.TemporaryDirectory(prefix="netsiam-load-") as tmp:
            f = Path(tmp) / ENCODER_FILE
            f.write_bytes(verified[ENCODER_FILE])
            encoder = keras.saving.load_model(f, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file; one clear line instead
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise NetsiamError(f"model artifact {p}: cannot load {ENCODER_FILE} safely ({first})") from None
    in_shape, out_shape = tuple(encoder.input_shape), tuple(encoder.output_shape)
    want = (None, window.length, len(manifest["features"]))
    if in_shape != want:
        raise NetsiamError(f"model artifact {p}: encoder input {in_shape} does not match the manifest "
                           f"(window length {window.length}, {len(manifest['features'])} features)")
    protos = Prototypes.from_json(_parse_json(verified[PROTOTYPES_FILE], p / PROTOTYPES_FILE), dim=int(out_shape[-1]))
    return Artifact(encoder, protos, manifest, p)
