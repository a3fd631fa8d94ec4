"""Shared fixtures: one real Kafka-protocol broker (Tansu) per test session, unique topics and groups
per test, a small labelled trace, and small model artifacts whose behaviour on that trace is known.

The test artifact is not a trained LSTM (too slow to train per session and its episode-level
behaviour is not pinned down): it is a valid netsiam artifact whose encoder is standard Keras layers,
Normalization -> [mean over the window, mean over its last 8 steps] -> Dense(3, sigmoid), with the
Dense weights fitted by least squares on labelled simulated windows. It separates the simulator's
classes cleanly (checked in test_pipeline), so episode-level assertions are meaningful.
:class:`LinearArtifact` is the same function in numpy, for pure pipeline tests without TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from netsiam.config import Config, KafkaConfig, TopicsConfig, WindowConfig
from netsiam.features import DEFAULT_FEATURES, RAW_METRICS, derive, required_metrics
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


def labelled_trace(sources: int = 6, minutes: float = 20, seed: int = TRACE_SEED) -> tuple[list[bytes], list[Any]]:
    """(JSONL lines, label intervals) of a simulated trace the test model gets exactly right."""
    from netsiam.trainer.simulate import simulate

    records, labels = simulate(sources, minutes, seed=seed, params=easy_sim_params())
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
    from netsiam.trainer.artifact import Prototypes

    p = Prototypes()
    for c in TARGETS:
        e = emb[(lab == c) & ~straddle]
        p.set(c, np.median(e, axis=0), threshold, len(e))
    return p


class LinearArtifact:
    """Duck-typed :class:`~netsiam.trainer.artifact.Artifact` computing :class:`LinearHead` in numpy."""

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
    """Write a real artifact directory (encoder.keras, prototypes.json, manifest.json)."""
    import dataclasses

    from netsiam.trainer.artifact import Artifact

    manifest = {
        "format": 1,
        "version": version,
        "features": list(DEFAULT_FEATURES),
        "raw_metrics": list(required_metrics(DEFAULT_FEATURES)),
        "window": dataclasses.asdict(window),
        "normalisation": {"mean": head.mean.tolist(), "std": np.sqrt(head.var).tolist()},
    }
    Artifact(keras_encoder(head, window), prototypes, manifest, None).save(path)
    return path


@dataclass
class Model:
    head: LinearHead
    prototypes: Any
    window: WindowConfig

    def fake(self, version: str = "linear-1") -> LinearArtifact:
        return LinearArtifact(self.head, self.prototypes, self.window, version)


@pytest.fixture(scope="session")
def model() -> Model:
    """The test model, fitted on a simulated trace (seed 7) that no test replays."""
    from netsiam.trainer.simulate import simulate

    window = WindowConfig()
    records, labels = simulate(FIT_SOURCES, FIT_MINUTES, seed=FIT_SEED, params=easy_sim_params())
    _, x, lab, straddle = labelled_windows(records, labels, window)
    head = fit_head(x, lab, straddle)
    return Model(head, fit_prototypes(head.embed(x), lab, straddle), window)


@pytest.fixture(scope="session")
def model_dir(model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model saved as a real artifact directory (read-only by convention: copy to modify)."""
    return save_artifact(tmp_path_factory.mktemp("model") / "artifact", model.head, model.prototypes,
                         model.window, "test-1")


# -- broker -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Tansu broker for the whole session, on a free port (its log in the session's tmp dir)."""
    from netsiam.detector.broker import start_broker

    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with start_broker(0, log_path=log_path) as bp:
        yield bp


@pytest.fixture
def topics(broker: Any) -> TopicsConfig:
    """Fresh samples/faults/dead-letter topics for one test (4 sample partitions)."""
    from netsiam.detector.broker import create_topics

    t = unique()
    tc = TopicsConfig(samples=f"{t}.samples", faults=f"{t}.faults", deadletter=f"{t}.deadletter",
                      samples_partitions=4)
    create_topics(broker.bootstrap, tc)
    return tc


def make_config(broker: Any, topics: TopicsConfig, group: str | None = None, **detector: Any) -> Config:
    """A config pointing at the session broker and this test's topics, with fast group settings."""
    from netsiam.config import DetectorConfig, MetricsConfig

    return Config(
        kafka=KafkaConfig(bootstrap_servers=broker.bootstrap, group_id=group or unique("g"), topics=topics,
                          session_timeout_ms=6000, heartbeat_interval_ms=1000),
        detector=DetectorConfig(**{"batch_wait_ms": 20, "reload_poll_s": 0.2, **detector}),
        metrics=MetricsConfig(port=0),
    )


def write_config(path: Path, cfg: Config) -> Path:
    import yaml

    d = cfg.to_dict()
    d["kafka"]["sasl_password"] = ""
    path.write_text(yaml.safe_dump(d))
    return path


# -- Kafka helpers --------------------------------------------------------------------------------------
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

    from netsiam.detector.kafka_io import client_kwargs

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


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """True end offsets (Tansu's ListOffsets(latest) lags, so count by reading)."""
    msgs = read_topic(bootstrap, topic, idle_s=0.5)
    out = dict.fromkeys(range(partitions), 0)
    for m in msgs:
        out[m.partition] = max(out[m.partition], m.offset + 1)
    return out


# -- daemon subprocess ------------------------------------------------------------------------------------
class DaemonProc:
    """``python -m netsiam detect`` as a child process; stderr captured to a file."""

    def __init__(self, config: Path, model: Path, log: Path, extra: Sequence[str] = ()) -> None:
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        with log.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netsiam", "detect", "--config", str(config), "--model", str(model),
                 "--metrics-port", "0", *extra],
                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)

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
        import re

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


@pytest.fixture
def daemons() -> Iterator[list[DaemonProc]]:
    """Collects daemon children; any still running at teardown are killed (by pid)."""
    procs: list[DaemonProc] = []
    yield procs
    for d in procs:
        d.kill()


def http_get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


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


EXACT_FIELDS = ("event_id", "source", "state", "fault", "window_end", "started_at", "model_version")


def same_event(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-4) -> bool:
    """Equal up to float32 rounding: the encoder's last bit may depend on the batch a window was
    embedded in, so distances and embeddings of a replayed event can differ in the last digit."""
    if any(a[k] != b[k] for k in EXACT_FIELDS) or set(a["distances"]) != set(b["distances"]):
        return False
    nums_a = [a["distance"], *a["embedding"], *(a["distances"][c] for c in sorted(a["distances"]))]
    nums_b = [b["distance"], *b["embedding"], *(b["distances"][c] for c in sorted(b["distances"]))]
    return len(nums_a) == len(nums_b) and all(abs(x - y) <= tol for x, y in zip(nums_a, nums_b, strict=True))


def check_episodes(evs: Sequence[dict[str, Any]], labels: Sequence[LabelInterval], trace_end: float,
                   margin_s: float = 60.0) -> None:
    """One ``raised`` and one ``cleared`` per labelled episode, with its fault; nothing else. An
    episode ending within ``margin_s`` of the trace's end may still be active (no ``cleared`` yet)."""
    from netsiam.trainer.evaluate import episodes_from_intervals

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
def free_udp_base(n: int, lo: int = 40000, hi: int = 60000) -> int:
    """A port P with P..P+n-1 free for UDP and TCP on 127.0.0.1 right now (SIPp peers, relay)."""
    import random

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi - n)
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


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
