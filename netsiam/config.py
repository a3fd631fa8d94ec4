"""Frozen, validated configuration loaded from ``config.yaml``.

Every section is a frozen dataclass; loading rejects unknown keys and wrong types with a message
that names the key (``detector.debounce.raise_k: expected int, got str``). CLI flags override
values through :func:`override`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from netsiam.errors import ConfigError
from netsiam.features import DEFAULT_FEATURES, FEATURES

__all__ = [
    "Config",
    "DebounceConfig",
    "DetectorConfig",
    "KAFKA_CLIENTS",
    "KafkaConfig",
    "MIN_REPLAY_S",
    "MetricsConfig",
    "ModelConfig",
    "PrototypeConfig",
    "SECRET_KEYS",
    "TopicsConfig",
    "TrainingConfig",
    "WindowConfig",
    "from_dict",
    "load_config",
    "override",
    "read_config_data",
]


@dataclass(frozen=True)
class WindowConfig:
    interval_s: float = 1.0
    length: int = 30
    stride: int = 1
    max_gap: int = 5

    def __post_init__(self) -> None:
        _check(self.interval_s > 0, "window.interval_s", "must be > 0")
        _check(self.length >= 2, "window.length", "must be >= 2")
        _check(1 <= self.stride <= self.length, "window.stride", "must be in 1..length")
        _check(self.max_gap >= 0, "window.max_gap", "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    lstm_units: int = 64
    dense_units: int = 32
    embedding_dim: int = 3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _check(self.lstm_units > 0 and self.dense_units > 0, "model", "units must be > 0")
        _check(self.embedding_dim >= 2, "model.embedding_dim", "must be >= 2")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class TrainingConfig:
    loss: str = "triplet"
    margin: float = 0.2
    epochs: int = 60
    steps_per_epoch: int = 60
    batch_per_class: int = 24
    semi_hard_fraction: float = 0.75
    learning_rate: float = 0.002
    val_fraction: float = 0.2
    patience: int = 6
    seed: int = 0
    snapshot_points: int = 400
    outlier_fraction: float = 0.33
    outlier_shift: tuple[float, ...] = (3.0, 8.0)
    thinning: float = 0.0
    thinning_keep: tuple[float, ...] = (0.2, 1.0)
    candidates: int = 1     # train this many seeds, keep the one the input-shift probe scores highest

    def __post_init__(self) -> None:
        _check(self.loss in ("triplet", "lossless"), "training.loss", "must be 'triplet' or 'lossless'")
        _check(self.margin > 0, "training.margin", "must be > 0")
        _check(self.learning_rate > 0, "training.learning_rate", "must be > 0")
        _check(self.patience >= 0, "training.patience", "must be >= 0")
        _check(self.seed >= 0 and self.seed + self.candidates <= 2**32, "training.seed",
               "must be in [0, 2**32 - candidates]: each candidate trains with a seed of its own")
        _check(self.epochs >= 1 and self.steps_per_epoch >= 1, "training", "epochs and steps must be >= 1")
        _check(self.batch_per_class >= 2, "training.batch_per_class", "must be >= 2")
        _check(0.0 <= self.semi_hard_fraction <= 1.0, "training.semi_hard_fraction", "must be in [0, 1]")
        _check(0.0 < self.val_fraction < 0.9, "training.val_fraction", "must be in (0, 0.9)")
        _check(0.0 <= self.outlier_fraction <= 2.0, "training.outlier_fraction", "must be in [0, 2]")
        _check(self.thinning >= 0.0, "training.thinning", "must be >= 0")
        _check(1 <= self.candidates <= 16, "training.candidates", "must be in [1, 16]")
        _check(len(self.thinning_keep) == 2 and 0 < self.thinning_keep[0] <= self.thinning_keep[1] <= 1,
               "training.thinning_keep", "must be [low, high] with 0 < low <= high <= 1")
        _check(len(self.outlier_shift) == 2 and 0 < self.outlier_shift[0] <= self.outlier_shift[1],
               "training.outlier_shift", "must be [low, high] with 0 < low <= high")


@dataclass(frozen=True)
class PrototypeConfig:
    method: str = "median"
    per_class: int = 1
    threshold_quantile: float = 0.99
    threshold_scale: float = 1.25
    min_support: int = 5
    min_threshold: float = 0.7  # floor on every class threshold (embedding units; the cube's edge is 1)
    max_threshold: float = 0.8  # cap on every class threshold (a floor above it wins)
    min_separation: float = 0.2  # feedback: support points this close to another class's prototype are refused

    def __post_init__(self) -> None:
        _check(self.method in ("median", "mean", "medoid", "kmeans"), "prototypes.method",
               "must be median, mean, medoid or kmeans")
        _check(self.per_class >= 1, "prototypes.per_class", "must be >= 1")
        _check(0.5 <= self.threshold_quantile <= 1.0, "prototypes.threshold_quantile", "must be in [0.5, 1]")
        _check(self.threshold_scale > 0, "prototypes.threshold_scale", "must be > 0")
        _check(self.min_support >= 1, "prototypes.min_support", "must be >= 1")
        _check(self.min_threshold >= 0, "prototypes.min_threshold", "must be >= 0")
        _check(self.max_threshold > 0, "prototypes.max_threshold", "must be > 0")
        _check(self.min_separation >= 0, "prototypes.min_separation", "must be >= 0")


@dataclass(frozen=True)
class DebounceConfig:
    raise_k: int = 2
    raise_n: int = 2
    clear_m: int = 2
    unknown_after: int = 10
    switch_after: int = 5
    hold_within: bool = True
    aftermath_s: float = 35.0
    release_in_range: bool = True   # inputs back in their normal ranges: an active fault holds no more
    release_named: bool = True      # ... not even through windows the encoder still reads as that fault
    added_grace_s: float = 65.0     # a class added after training counts as unknown this long after another fault
    hold_signature: bool = True     # a window showing the active fault's signature inputs still carries it
    name_on_signature: bool = True  # no fault active: an unknown window nearest a fault showing its signature is it
    name_on_mark: bool = True       # a window showing one fault's mark (what no other fault shows) is that fault
    slow_answer_factor: float = 2.0  # a normal window answered this many times slower than its source usually is: unknown
    slow_unknown_after: int = 3     # ... and this many such windows (or seconds) in a row raise unknown (0: as unknown_after)

    def __post_init__(self) -> None:
        _check(self.aftermath_s >= 0, "detector.debounce.aftermath_s", "must be >= 0")
        _check(self.added_grace_s >= 0, "detector.debounce.added_grace_s", "must be >= 0")
        _check(1 <= self.raise_k <= self.raise_n, "detector.debounce.raise_k", "must be in 1..raise_n")
        _check(self.unknown_after >= 1, "detector.debounce.unknown_after", "must be >= 1")
        _check(self.clear_m >= 1, "detector.debounce.clear_m", "must be >= 1")
        _check(self.switch_after >= 1, "detector.debounce.switch_after", "must be >= 1")
        _check(self.slow_answer_factor == 0 or self.slow_answer_factor > 1, "detector.debounce.slow_answer_factor",
               "must be 0 (off) or > 1")
        _check(self.slow_unknown_after >= 0, "detector.debounce.slow_unknown_after", "must be >= 0 (0: off)")


MIN_REPLAY_S = 120.0


@dataclass(frozen=True)
class DetectorConfig:
    model: str = ""
    debounce: DebounceConfig = field(default_factory=DebounceConfig)
    batch_max: int = 1024
    batch_wait_ms: int = 50
    silent_after_s: float = 30.0
    idle_evict_s: float = 900.0
    max_sources: int = 100_000
    max_record_bytes: int = 65_536
    max_clock_skew_s: float = 86_400.0
    reload_poll_s: float = 2.0
    max_replay_s: float = 0.0

    def __post_init__(self) -> None:
        _check(self.batch_max >= 1, "detector.batch_max", "must be >= 1")
        _check(self.batch_wait_ms >= 0, "detector.batch_wait_ms", "must be >= 0")
        _check(self.max_sources >= 1, "detector.max_sources", "must be >= 1")
        _check(self.idle_evict_s > 0, "detector.idle_evict_s", "must be > 0")
        # silence must be noticed before the source's state (and its fault) is dropped
        _check(self.silent_after_s == 0 or 0 < self.silent_after_s < self.idle_evict_s, "detector.silent_after_s",
               "must be 0 (off) or in (0, idle_evict_s)")
        # a replay-from window is at least half of it old: room for a window and the windows that raise the
        # fault again (30 + 5 by default) even where records arrive late or with gaps
        _check(self.max_replay_s == 0 or self.max_replay_s >= MIN_REPLAY_S, "detector.max_replay_s",
               f"must be 0 (no bound) or >= {MIN_REPLAY_S:g}")


@dataclass(frozen=True)
class TopicsConfig:
    samples: str = "netsiam.samples"
    faults: str = "netsiam.faults"
    deadletter: str = "netsiam.deadletter"
    feedback: str = "netsiam.feedback"
    samples_partitions: int = 4


# kafka-python's security options, each reachable from config.yaml (netsiam/kafka_io.py passes them
# through). ssl_context is not: the ssl_* keys are what kafka-python builds one from.
SECRET_KEYS = ("sasl_password", "ssl_password")


# kafka.client: the library replay and the collectors publish with (netsiam/producer.py) and the daemon
# consumes samples with (netsiam/confluent_consumer.py). The daemon's own producer, dump and broker
# use kafka-python whatever this says.
KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")


def bootstrap_problem(text: str) -> str | None:
    """Why ``text`` is not a Kafka bootstrap list, ``HOST[:PORT][,HOST[:PORT]...]`` (``[IPv6]:PORT`` too; empty
    entries skipped, as the clients skip them), or None: said at start, not as a client library's ValueError
    once the first connection is tried."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        return "empty"
    for part in parts:
        host, port = part.split("://", 1)[-1], None          # PLAINTEXT://host:9092 reads as host:9092
        if host.startswith("["):            # [::1]:9092
            host, _, rest = host[1:].partition("]")
            if rest and not rest.startswith(":"):
                return f"{part!r} is not [IPV6]:PORT"
            port = rest[1:] if rest else None
        elif host.count(":") == 1:
            host, port = host.split(":")
        # two colons or more, unbracketed: an IPv6 address alone (kafka-python's reading)
        if not host:
            return f"{part!r} has no host"
        if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
            return f"{part!r}: the port must be 1-65535"
    return None


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    client: str = "kafka-python"
    group_id: str = "netsiam-detector"
    client_id: str = "netsiam"
    auto_offset_reset: str = "earliest"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    sasl_kerberos_name: str = ""
    sasl_kerberos_service_name: str = "kafka"
    sasl_kerberos_domain_name: str = ""
    sasl_oauth_token_provider: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_password: str = ""
    ssl_crlfile: str = ""
    ssl_ciphers: str = ""
    ssl_check_hostname: bool = True
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_records: int = 2000
    topics: TopicsConfig = field(default_factory=TopicsConfig)

    def __post_init__(self) -> None:
        # empty is refused where a client is made (kafka_io.bootstrap_list): an offline verb needs no broker
        why = bootstrap_problem(self.bootstrap_servers) if self.bootstrap_servers.strip() else None
        _check(why is None, "kafka.bootstrap_servers", f"must be HOST:PORT[,HOST:PORT...] ({why})")
        _check(self.security_protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
               "kafka.security_protocol", "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        _check(self.auto_offset_reset in ("earliest", "latest"), "kafka.auto_offset_reset",
               "must be earliest or latest")
        _check(self.sasl_oauth_token_provider == "" or ":" in self.sasl_oauth_token_provider,
               "kafka.sasl_oauth_token_provider", "must be module:attribute")
        _check(self.client in KAFKA_CLIENTS, "kafka.client", "must be kafka-python or confluent-kafka")

    def __repr__(self) -> str:  # never print the passwords
        return f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, group_id={self.group_id!r}, ...)"


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9108

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "metrics.port", "must be 0-65535")


@dataclass(frozen=True)
class Config:
    window: WindowConfig = field(default_factory=WindowConfig)
    features: tuple[str, ...] = DEFAULT_FEATURES
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        _check(not unknown, "features", f"unknown feature(s) {unknown}; known: {sorted(FEATURES)}")
        _check(len(self.features) > 0, "features", "must not be empty")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in SECRET_KEYS:
            d["kafka"][key] = "***" if getattr(self.kafka, key) else ""
        return _lists(d)


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_lists(v) for v in obj]
    return obj


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config {key}: {why}")


T = TypeVar("T")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config {key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")  # type: ignore[arg-type]
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config {key}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for alt in typing.get_args(tp):
            try:
                return _coerce(value, alt, key)
            except ConfigError:
                continue
        raise ConfigError(f"config {key}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config {key}: expected null")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):   # YAML's .nan, .inf
        raise ConfigError(f"config {key}: must be a finite number, got {value!r}")
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"config {key}: expected {tp.__name__}, got {type(value).__name__} ({value!r})")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build a frozen config dataclass from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"config: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The mapping a config file holds (not yet validated: :func:`from_dict` does that)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {'is a directory' if p.is_dir() else 'not found'}: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {p}: cannot read it ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {p}: top level must be a mapping")
    return data


def load_config(path: str | Path | None) -> Config:
    """Load ``config.yaml``; ``None`` gives the built-in defaults (the same values config.yaml lists).

    This reads one file only; the CLI's lookup order and environment overrides are in
    :mod:`netsiam.settings`."""
    if path is None:
        return Config()
    return from_dict(Config, read_config_data(path))


def override(cfg: T, dotted: dict[str, Any]) -> T:
    """Return a copy with dotted keys replaced, e.g. ``{"kafka.bootstrap_servers": "h:9092"}``."""
    groups: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for key, value in dotted.items():
        if value is None:
            continue
        head, _, rest = key.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in groups.items():
        direct[head] = override(getattr(cfg, head), sub)
    return dataclasses.replace(cfg, **direct)  # type: ignore[type-var]
