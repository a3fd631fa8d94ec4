"""Helpers shared by the test modules (fixtures live in conftest.py and use these).

A small labelled trace and test models whose behaviour on it is known: not a trained LSTM (too slow
to train per session, its episode-level behaviour not pinned down) but a valid netsiam artifact whose
encoder is standard Keras layers, Normalization -> [mean over the window, mean over its last 8 steps]
-> Dense(3, sigmoid), the Dense weights fitted by least squares on labelled simulated windows. It
separates the simulator's classes cleanly (checked in test_pipeline), so episode-level assertions are
meaningful. :class:`LinearArtifact` is the same function in numpy, for pipeline tests without
TensorFlow. Also: small artifacts built by hand, a fake Kafka message, Kafka and daemon helpers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from netsiam.config import Config, KafkaConfig, TopicsConfig, WindowConfig
from netsiam.features import DEFAULT_FEATURES, RAW_METRICS, derive, required_metrics
from netsiam.importers.sipp import import_sipp
from netsiam.kafka_io import ConsumedRecord
from netsiam.traceio import LabelInterval, Record

REPO = Path(__file__).resolve().parent.parent
LAST_K = 8                    # the test encoder also averages the last 8 steps (reacts to a window's end)
TARGETS = {"normal": (0.15, 0.15, 0.15), "blocked": (0.85, 0.15, 0.5), "capacity_limit": (0.15, 0.85, 0.5)}
FIT_SEED, FIT_SOURCES, FIT_MINUTES = 7, 6, 30
TRACE_SEED = 3                # the labelled test trace (a seed the test model gets exactly right)


def easy_sim_params() -> Any:
    """The simulator in an easy regime (moderate load, short holds, fast answers, long gaps): these
    tests are about the daemon, so the test model must separate the classes cleanly, which a linear
    head does here but not across the simulator's full range."""
    from netsiam.trainer.simulate import SimParams

    return SimParams(load_range=(20.0, 300.0), hold_s=(5.0, 15.0), response_ms=(2.0, 8.0), min_gap_s=90.0,
                     fault_duration_s=(45.0, 120.0))


def labelled_trace(sources: int = 6, minutes: float = 20, seed: int = TRACE_SEED,
                   params: Any = None) -> tuple[list[bytes], list[Any]]:
    """(JSONL lines, label intervals) of a simulated trace the test model gets exactly right
    (``params``: the simulator's, default :func:`easy_sim_params`)."""
    from netsiam.trainer.simulate import simulate

    records, labels = simulate(sources, minutes, seed=seed, params=params or easy_sim_params())
    return trace_lines(records), labels


def unique(prefix: str = "t") -> str:
    """A name no other test uses (topics, groups)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- labelled data and test models ------------------------------------------------------------------
def record_tuples(records: Sequence[Record]) -> list[tuple[str, float, tuple[float, ...]]]:
    return [(r.source, r.ts, tuple(float(r.metrics.get(m, 0.0)) for m in RAW_METRICS)) for r in records]


def labelled_windows(records: Sequence[Record], labels: Sequence[LabelInterval], window: WindowConfig
                     ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(Windows, derived x (N,T,F), end label (N,), straddles a label change (N,))."""
    from netsiam.trainer.dataset import label_at
    from netsiam.windowing import windows_from_records

    w = windows_from_records(record_tuples(records), window, len(RAW_METRICS))
    x = derive(w.raw, DEFAULT_FEATURES)
    lab = label_at(labels, w.sources, w.end_ts)
    start = label_at(labels, w.sources, w.end_ts - (window.length - 1) * window.interval_s)
    return w, x, lab, start != lab



def detect_offline(art: Any, emb: np.ndarray, x: np.ndarray, w: Any, debounce: Any) -> tuple[list[Any], np.ndarray | None]:
    """The events ``netsiam evaluate`` finds over windows ``w`` (derived ``x``, embedded ``emb``), given all the
    daemon's debounce is given (:func:`~netsiam.trainer.detection.debounce_givens`); -> (events, the ``added``
    mask)."""
    from netsiam.trainer.detection import debounce_givens, givens_events

    g = debounce_givens(art, w.sources, w.end_ts, w.raw, x, emb, debounce)
    return givens_events(w.sources, w.end_ts, g, debounce), g.added

# -- small artifacts built by hand ----------------------------------------------------------------
class MeanEncoder:
    """Stand-in encoder: the embedding of a window is the mean of its first 3 features, clipped."""

    output_shape = (None, 3)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x).mean(axis=1)[:, :3], 0.0, 1.0)


def lstm_encoder(length: int, units: int = 4, n_features: int = len(DEFAULT_FEATURES), seed: int = 0) -> Any:
    """A small untrained netsiam encoder (the real architecture) with identity normalisation."""
    from netsiam.trainer.model import EncoderSpec, build_encoder

    spec = EncoderSpec(length, n_features, lstm_units=units, dense_units=units)
    return build_encoder(spec, np.zeros(n_features), np.ones(n_features), seed=seed)


def prototypes_at(points: Mapping[str, Any], threshold: float = 0.2, support: int = 10) -> Any:
    """Prototypes with the given point(s) per class, one threshold and support for all."""
    from netsiam.serving import Prototypes

    protos = Prototypes()
    for name, p in points.items():
        protos.set(name, np.asarray(p, np.float64), threshold, support)
    return protos


def manifest(*, length: int = 30, stride: int = 5, features: Sequence[str] = DEFAULT_FEATURES,
             version: str = "test-1", mean: Sequence[float] | np.ndarray | None = None,
             std: Sequence[float] | np.ndarray | None = None,
             **extra: Any) -> dict[str, Any]:
    """An artifact manifest (format 1, 1-s samples, identity normalisation unless given); not validated,
    so a test can describe an artifact that must be refused."""
    f = len(features)
    return {"format": 1, "version": version, "features": list(features),
            "window": {"interval_s": 1.0, "length": length, "stride": stride, "max_gap": 5},
            "normalisation": {"mean": [float(v) for v in mean] if mean is not None else [0.0] * f,
                              "std": [float(v) for v in std] if std is not None else [1.0] * f},
            **extra}


def small_artifact(encoder: Any, prototypes: Any, man: dict[str, Any], path: Path | None = None) -> Any:
    """An :class:`~netsiam.serving.Artifact`, written to ``path`` (manifest last, hashes) when given."""
    from netsiam.serving import Artifact

    art = Artifact(encoder, prototypes, man)
    if path is not None:
        art.save(path)
    return art


# -- the test model ------------------------------------------------------------------------------
@dataclass
class LinearHead:
    mean: np.ndarray     # (F,)
    var: np.ndarray      # (F,)
    weight: np.ndarray   # (2F, 3)
    bias: np.ndarray     # (3,)

    def embed(self, x: np.ndarray) -> np.ndarray:
        xn = (np.asarray(x, np.float64) - self.mean) / np.sqrt(self.var)
        z = np.concatenate([xn.mean(1), xn[:, -LAST_K:].mean(1)], axis=1) @ self.weight + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_head(x: np.ndarray, lab: np.ndarray, straddle: np.ndarray) -> LinearHead:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0) + 1e-6
    xn = (x - mean) / np.sqrt(var)
    keep = ~straddle
    feats = np.concatenate([xn.mean(1), xn[:, -LAST_K:].mean(1)], axis=1)[keep]
    y = np.array([TARGETS[str(v)] for v in lab[keep]])
    a = np.c_[feats, np.ones(len(feats))]
    sol, *_ = np.linalg.lstsq(a, np.log(y / (1 - y)), rcond=None)
    return LinearHead(mean, var, sol[:-1], sol[-1])


def fit_prototypes(emb: np.ndarray, lab: np.ndarray, straddle: np.ndarray, threshold: float = 10.0) -> Any:
    from netsiam.serving import Prototypes

    p = Prototypes()
    for c in TARGETS:
        e = emb[(lab == c) & ~straddle]
        p.set(c, np.median(e, axis=0), threshold, len(e))
    return p


class LinearArtifact:
    """Duck-typed :class:`~netsiam.serving.Artifact` computing :class:`LinearHead` in numpy."""

    def __init__(self, head: LinearHead, prototypes: Any, window: WindowConfig, version: str = "linear-1") -> None:
        self.head = head
        self.prototypes = prototypes
        self.window = window
        self.features = DEFAULT_FEATURES
        self.required = required_metrics(DEFAULT_FEATURES)
        self.version = version
        self.calls: list[int] = []  # batch size of each embed call

    def embed(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        self.calls.append(len(x))
        return self.head.embed(x)


def keras_encoder(head: LinearHead, window: WindowConfig) -> Any:
    import keras

    t, f = window.length, len(DEFAULT_FEATURES)
    inp = keras.Input(shape=(t, f), name="window")
    h = keras.layers.Normalization(axis=-1, mean=head.mean.astype(np.float32), variance=head.var.astype(np.float32),
                                   name="normalise")(inp)
    a = keras.layers.GlobalAveragePooling1D(name="mean_all")(h)
    b = keras.layers.GlobalAveragePooling1D(name="mean_last")(keras.layers.Cropping1D((t - LAST_K, 0))(h))
    out = keras.layers.Dense(3, activation="sigmoid", name="embedding")(keras.layers.Concatenate()([a, b]))
    model = keras.Model(inp, out, name="netsiam_test_encoder")
    model.get_layer("embedding").set_weights([head.weight.astype(np.float32), head.bias.astype(np.float32)])
    return model


def save_artifact(path: Path, head: LinearHead, prototypes: Any, window: WindowConfig, version: str) -> Path:
    """Write the test model as a real artifact directory (encoder.keras, prototypes.json, manifest.json)."""
    assert window.interval_s == 1.0 and window.max_gap == 5, window
    man = manifest(length=window.length, stride=window.stride, version=version, mean=head.mean,
                   std=np.sqrt(head.var), raw_metrics=list(required_metrics(DEFAULT_FEATURES)))
    small_artifact(keras_encoder(head, window), prototypes, man, path)
    return path


@dataclass
class Model:
    head: LinearHead
    prototypes: Any
    window: WindowConfig

    def fake(self, version: str = "linear-1") -> LinearArtifact:
        return LinearArtifact(self.head, self.prototypes, self.window, version)


def fit_model() -> Model:
    """The test model, fitted on a simulated trace (seed 7) that no test replays.

    Its windows end every 5 s, not every second as the default: these tests are about the daemon's
    mechanics, and a linear head cannot tell the tail of a blocked episode (calls timing out 32 s
    later) from a capacity limit one second at a time, where the LSTM can. The decision every second
    is exercised with the shipped model (test_daemon_sipp, the e2e and soak runs)."""
    from netsiam.trainer.simulate import simulate

    window = WindowConfig(stride=5)
    records, labels = simulate(FIT_SOURCES, FIT_MINUTES, seed=FIT_SEED, params=easy_sim_params())
    _, x, lab, straddle = labelled_windows(records, labels, window)
    head = fit_head(x, lab, straddle)
    return Model(head, fit_prototypes(head.embed(x), lab, straddle), window)


# -- broker -------------------------------------------------------------------------------------------
def make_config(broker: Any, topics: TopicsConfig, group: str | None = None, **detector: Any) -> Config:
    """A config pointing at the session broker and this test's topics, with fast group settings."""
    from netsiam.config import DebounceConfig, DetectorConfig, MetricsConfig

    # hold_within off: the linear test model's thresholds (10) hold every window, under which the
    # hysteresis would keep every fault up; tests serving the shipped model pass debounce=DebounceConfig()
    detector = {"debounce": DebounceConfig(hold_within=False), **detector}
    return Config(
        kafka=KafkaConfig(bootstrap_servers=broker.bootstrap, group_id=group or unique("g"), topics=topics,
                          session_timeout_ms=6000, heartbeat_interval_ms=1000),
        # silent_after_s: 10 min, so that a test comparing the daemon with an offline run never waits long
        # enough for the wall clock to make its sources silent (the offline run has no wall clock)
        detector=DetectorConfig(**{"batch_wait_ms": 20, "reload_poll_s": 0.2, "silent_after_s": 600.0, **detector}),
        metrics=MetricsConfig(port=0),
    )


def write_config(path: Path, cfg: Config) -> Path:
    import yaml

    d = cfg.to_dict()
    d["kafka"]["sasl_password"] = ""
    path.write_text(yaml.safe_dump(d))
    return path


# -- Kafka helpers --------------------------------------------------------------------------------------
def _static_token_provider() -> Any:
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class StaticTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
        """kafka.sasl_oauth_token_provider in tests: ``helpers:StaticTokenProvider``."""

        def token(self) -> str:
            return "t0k3n"

    return StaticTokenProvider


StaticTokenProvider = _static_token_provider()

Msg = ConsumedRecord  # a consumed Kafka record as the pipeline reads it


TOPIC = "s"  # the samples topic of pipeline tests without a broker


def partitioned(lines: Sequence[bytes | None], n: int = 2, topic: str = TOPIC) -> dict[tuple[str, int], list[Msg]]:
    """Lines as the broker would hold them: keyed by source, hashed to ``n`` partitions, in order
    (a line without a readable source goes to partition ``i % n``, keyless)."""
    out: dict[tuple[str, int], list[Msg]] = {(topic, p): [] for p in range(n)}
    for i, line in enumerate(lines):
        try:
            src: bytes | None = orjson.loads(line or b"")["source"].encode()
            p = zlib.crc32(src or b"") % n
        except Exception:  # noqa: BLE001 - bad lines go anywhere
            src, p = None, i % n
        msgs = out[(topic, p)]
        msgs.append(Msg(topic, p, len(msgs), 1_000 * i, src, line))
    return out


def produce(bootstrap: str, topic: str, lines: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
            partition: int | None = None) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for i, line in enumerate(lines):
            p.send(topic, value=line, key=None if keys is None else keys[i], partition=partition)
        p.flush()
    finally:
        p.close()


def read_topic(bootstrap: str, topic: str, *, until: Callable[[list[Any]], bool] | None = None,
               timeout_s: float = 30.0, idle_s: float = 1.0, kafka: KafkaConfig | None = None) -> list[Any]:
    """Every message of ``topic`` from the beginning: until ``until(msgs)`` holds, or until nothing new
    arrives for ``idle_s`` (after ``until`` holds, or at once without it), or ``timeout_s``.

    Never ends before every partition has been read up to the high watermark its fetch responses
    report: on a loaded machine the first fetch can take longer than ``idle_s``, and an "idle"
    consumer that has not fetched yet would return nothing. ``kafka``: security settings (TLS, SASL).
    """
    from kafka import KafkaConsumer, TopicPartition

    from netsiam.kafka_io import client_kwargs

    c = KafkaConsumer(**client_kwargs(kafka or KafkaConfig(), bootstrap), enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topic)
        exists = bool(parts)
        tps = [TopicPartition(topic, p) for p in sorted(parts or {0})]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()

        def caught_up() -> bool:
            if not exists:
                return True  # no high watermark ever comes for a topic that does not exist
            for tp in tps:
                hw = c.highwater(tp)
                if hw is None or c.position(tp) < hw:
                    return False
            return True

        while time.monotonic() < deadline:
            got = c.poll(200)
            for msgs in got.values():
                out.extend(msgs)
            if got:
                last_new = time.monotonic()
            done = until(out) if until else True
            if done and time.monotonic() - last_new >= idle_s and caught_up():
                break
        return out
    finally:
        c.close()


def events_of(msgs: Sequence[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in msgs]


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        c.close()


def committed_total(bootstrap: str, group: str, topic: str, partitions: int, want: int, timeout_s: float) -> int:
    """Offsets ``group`` committed on ``topic``, summed over partitions, once they reach ``want``."""
    def total() -> int:
        return sum(v or 0 for v in committed(bootstrap, group, topic, partitions).values())
    wait_until(lambda: total() >= want, timeout_s, f"{want} records committed by {group}", step_s=0.3)
    return total()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """True end offsets (Tansu's ListOffsets(latest) lags, so count by reading)."""
    msgs = read_topic(bootstrap, topic, idle_s=0.5)
    out = dict.fromkeys(range(partitions), 0)
    for m in msgs:
        out[m.partition] = max(out[m.partition], m.offset + 1)
    return out


# -- the daemon: in-process, and the offline reference ---------------------------------------------------
def wait_until(cond: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.05) -> float:
    """Poll ``cond`` until it holds; returns the seconds it took (AssertionError after ``timeout_s``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextmanager
def running(cfg: Config, model_dir: Path) -> Iterator[Any]:
    """Run a Daemon on a thread until the block ends (then drain, commit, stop; exit status 0)."""
    from prometheus_client import CollectorRegistry

    from netsiam.detector.loop import Daemon
    from netsiam.serving import load_artifact

    d = Daemon(cfg, load_artifact(model_dir), model_dir, registry=CollectorRegistry())
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(d.run())
        except BaseException as e:  # noqa: BLE001 - surfaced to the test below
            result.append(e)

    t = threading.Thread(target=target, name="daemon", daemon=True)
    t.start()
    try:
        assert d.started.wait(60), "daemon did not start"
        wait_until(lambda: d.ready()[0] or bool(result), 30, "partitions assigned")
        assert not result, result
        yield d
    finally:
        d.request_stop()
        t.join(60)
    assert result == [0], result


def value(d: Any, name: str, **labels: str) -> float:
    """A sample of an in-process daemon's registry (0 when absent)."""
    v = d.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else float(v)


def embed_all(p: Any, batch_max: int = 1024) -> None:
    """Embed and apply every pending window of a pipeline, as the daemon's drain does."""
    from netsiam.detector.batch import run_batch

    while p.pending:
        b = p.take_batch(batch_max)
        assert b is not None
        p.apply(b, run_batch(b))


def raised_series(p: Any, name: str) -> list[Any]:
    """The samples a pipeline's raised-fault collector exports under ``name`` (a scrape's view)."""
    return [s for fam in p.metrics.raised.collect() if fam.name == name for s in fam.samples]


def offline_events(cfg: Config, model_dir: Path, msgs: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """The events an uninterrupted daemon computes for these stored messages, by event_id."""
    from netsiam.detector.pipeline import EventOut, Pipeline
    from netsiam.serving import load_artifact

    p = Pipeline(cfg, load_artifact(model_dir))
    by_tp: dict[int, list[Any]] = {}
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        by_tp.setdefault(m.partition, []).append(m)
    for part, ms in by_tp.items():
        p.feed((cfg.kafka.topics.samples, part), ms)
    embed_all(p)
    out = {}
    for o in p.take_outbox():
        if isinstance(o, EventOut):
            out[o.event.event_id] = o.event.to_json()
    return out


def background_replay(lines: list[bytes], bootstrap: str, topic: str, speed: float) -> threading.Thread:
    from netsiam.replay import replay_lines

    t = threading.Thread(target=replay_lines, args=(lines, bootstrap, topic), kwargs={"speed": speed}, daemon=True)
    t.start()
    return t


# -- the daemon as a subprocess ----------------------------------------------------------------------------
def start_netsiam(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m netsiam ARGS`` as a child process, stdout and stderr appended to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-m", "netsiam", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)


class DaemonProc:
    """``python -m netsiam detect`` as a child process; stderr captured to a file."""

    def __init__(self, config: Path, model: Path, log: Path, extra: Sequence[str] = ()) -> None:
        self.log = log
        self.proc = start_netsiam(["detect", "--config", str(config), "--model", str(model), "--metrics-port", "0",
                                   *extra], log)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout_s: float = 60.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t = self.text()
            if t.count(needle) >= count:
                return t
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {needle!r}:\n{t[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {needle!r}:\n{self.text()[-3000:]}")

    @property
    def metrics_port(self) -> int:
        m = re.search(r"metrics listening on http://[^:]+:(\d+)/", self.text())
        assert m, self.text()[-2000:]
        return int(m.group(1))

    def stop(self, sig: int = 15, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def http_get(port: int, path: str) -> tuple[int, str]:

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(port: int, name: str) -> float | None:
    """An unlabelled sample on a daemon's /metrics (None: absent, or the daemon unreachable)."""
    try:
        _, text = http_get(port, "/metrics")
    except OSError:
        return None
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def trace_lines(records: Sequence[Record]) -> list[bytes]:
    return [orjson.dumps(r.to_json()) for r in records]


def bad_lines() -> list[tuple[bytes | None, str]]:
    """(message value, the dead-letter reason it must get): each way a record can be bad."""
    mets: dict[str, Any] = dict.fromkeys(RAW_METRICS, 1)
    good: dict[str, Any] = {"source": "x", "ts": 1795384000.0, "metrics": mets}

    def rec(**kw: Any) -> bytes:
        return orjson.dumps({**good, **kw})

    return [
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (None, "not_json"),
        (b"[1, 2, 3]", "schema"),
        (rec(source=""), "schema"),
        (rec(metrics={**mets, "OutgoingCall": "many"}), "schema"),
        (rec(metrics={k: v for k, v in mets.items() if k != "SuccessfulCall"}), "missing_feature"),
        (b'{"source": "x", "ts": 1795384000.0, "metrics": {"OutgoingCall": NaN}}', "non_finite"),
        (b'{"source": "x", "ts": 1795384000.0, "metrics": {"OutgoingCall": Infinity}}', "non_finite"),
        (rec(metrics={**mets, "FailedCall": -1}), "negative_counter"),
        (rec(ts="yesterday"), "bad_timestamp"),
        (rec(ts=-5), "bad_timestamp"),
        (rec(ts=1e12), "bad_timestamp"),
        (rec(metrics={**mets, "pad": 1}, source="x" * 200) + b" " * 70_000, "too_large"),
    ]


EXACT_FIELDS = ("event_id", "source", "state", "fault", "window_end", "started_at", "model_version", "evidence")


def same_event(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-4) -> bool:
    """Equal up to float32 rounding: the encoder's last bit may depend on the batch a window was
    embedded in, so distances and embeddings of a replayed event can differ in the last digit. Evidence
    is exact: it is derived from the raising window's records alone."""
    if any(a[k] != b[k] for k in EXACT_FIELDS) or set(a["distances"]) != set(b["distances"]):
        return False
    nums_a = [a["distance"], *a["embedding"], *(a["distances"][c] for c in sorted(a["distances"]))]
    nums_b = [b["distance"], *b["embedding"], *(b["distances"][c] for c in sorted(b["distances"]))]
    return len(nums_a) == len(nums_b) and all(abs(x - y) <= tol for x, y in zip(nums_a, nums_b, strict=True))


def check_episodes(evs: Sequence[dict[str, Any]], labels: Sequence[LabelInterval], trace_end: float,
                   margin_s: float = 60.0) -> None:
    """One ``raised`` and one ``cleared`` per labelled episode, with its fault; nothing else. An
    episode ending within ``margin_s`` of the trace's end may still be active (no ``cleared`` yet)."""
    from netsiam.trainer.detection import episodes_from_intervals

    matched = 0
    for ep in episodes_from_intervals(labels):
        mine = [e for e in evs if e["source"] == ep.source and ep.start - 1 <= e["started_at"] <= ep.end]
        got = [(e["state"], e["fault"]) for e in mine]
        want = [("raised", ep.label), ("cleared", ep.label)]
        assert got == want or (ep.end > trace_end - margin_s and got == want[:1]), (ep, got)
        assert ep.start <= mine[0]["window_end"] <= ep.end + 30, (ep, mine[0])
        matched += len(mine)
    assert matched == len(evs), "events outside every labelled episode"


# -- SIPp on loopback (collector tests) ------------------------------------------------------------------
def free_udp_base(n: int, lo: int = 10000, hi: int = 32000) -> int:
    """A port P with P..P+n-1 free for UDP and TCP on 127.0.0.1 right now (the live testbed's search)."""
    if str(REPO / "deploy" / "testbed") not in sys.path:
        sys.path.insert(0, str(REPO / "deploy" / "testbed"))
    from live_demo import free_port_base

    return free_port_base(n, lo, hi)


def start_sipp(args: Sequence[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """``sipp ARGS -nostdin`` in the background (stderr to ``log``); stop it with :func:`stop_sipp`."""
    with log.open("ab") as f:
        return subprocess.Popen(["sipp", *args, "-nostdin"], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=f)


def stop_sipp(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """SIGKILL by default: the statistics file ends on its last whole period (as record_sipp does)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a frozen SIPp must be able to die
        proc.send_signal(sig)
    proc.wait(10)


needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed (apt-get install sip-tester)")
needs_confluent = pytest.mark.skipif(importlib.util.find_spec("confluent_kafka") is None,
                                     reason="confluent-kafka is not installed (pip install 'netsiam[confluent]')")


# -- shared by the collector and deploy tests ------------------------------------------------------------
_EPOCH = re.compile(r"(\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t)(\d+\.\d+)")
DATA = REPO / "tests" / "data"


def stat_text(name: str, shift_s: float = 0.0) -> str:
    """A fixture's statistics text; ``shift_s`` moves every timestamp (another SIPp run)."""
    text = (DATA / f"{name}_stat.csv").read_text()
    if shift_s:
        text = _EPOCH.sub(lambda m: f"{m.group(1)}{float(m.group(2)) + shift_s:.6f}", text)
    return text


def imported(paths: list[Path], source: str = "s") -> list[bytes]:
    return [orjson.dumps(r.to_json()) for r in import_sipp(paths, source)]


def capture_rights() -> str:
    """'' when this process can capture on lo, else why not."""
    for tool in ("tshark", "dumpcap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install tshark)"
    r = subprocess.run(["dumpcap", "-L", "-i", "lo"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        why = next((ln for ln in r.stderr.splitlines() if ln.strip() and "Running as" not in ln), "")
        return f"no capture rights on lo (dumpcap needs CAP_NET_RAW + CAP_NET_ADMIN): {why}"
    return ""


CAPTURE_SKIP = capture_rights()


def unit_directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out




needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (package systemd)")
