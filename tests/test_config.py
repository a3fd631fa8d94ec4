from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netsiam.config import Config, from_dict, load_config, override
from netsiam.errors import NetsiamError

REPO = Path(__file__).resolve().parent.parent


def test_config_yaml_lists_exactly_the_builtin_defaults() -> None:
    assert load_config(REPO / "config.yaml") == Config()


def test_config_yaml_mentions_every_key_with_a_comment() -> None:
    text = (REPO / "config.yaml").read_text()
    data = yaml.safe_load(text)

    def walk(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += walk(v, prefix + k + ".") if isinstance(v, dict) else [prefix + k]
        return out

    keys = walk(Config().to_dict())
    assert sorted(keys) == sorted(walk(data))
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in line, f"config.yaml line without a comment: {line!r}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"window": {"lenght": 3}}, "unknown key window.lenght"),
        ({"colour": 1}, "unknown key colour"),
        ({"detector": {"debounce": {"raise_k": "2"}}}, "detector.debounce.raise_k: expected int, got str"),
        ({"window": {"length": 2.5}}, "window.length: expected int, got float"),
        ({"kafka": {"bootstrap_servers": 9092}}, "kafka.bootstrap_servers: expected str"),
        ({"kafka": {"bootstrap_servers": "host:abc"}}, "kafka.bootstrap_servers: must be HOST:PORT"),
        ({"kafka": {"bootstrap_servers": "a:1,:2"}}, "kafka.bootstrap_servers: must be HOST:PORT"),
        ({"training": {"seed": 2**32 - 2, "candidates": 3}}, "training.seed: must be in"),
        ({"training": {"learning_rate": -1}}, "training.learning_rate: must be > 0"),
        ({"training": {"learning_rate": float("nan")}}, "training.learning_rate: must be a finite number"),
        ({"training": {"seed": -1}}, "training.seed"),
        ({"detector": {"debounce": {"slow_answer_factor": float("inf")}}}, "slow_answer_factor: must be a finite"),
        ({"features": "offered_rel"}, "features: expected a list"),
        ({"features": ["no_such_feature"]}, "unknown feature"),
        ({"window": {"stride": 0}}, "window.stride"),
        ({"training": {"loss": "hinge"}}, "training.loss"),
        ({"metrics": {"port": True}}, "metrics.port: expected int, got bool"),
        ({"metrics": {"port": 70000}}, "metrics.port: must be 0-65535"),
        ({"window": []}, "window: expected a mapping"),
        ({"detector": {"max_replay_s": 60}}, "detector.max_replay_s: must be 0 .no bound. or >= 120"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(data: dict, message: str) -> None:
    with pytest.raises(NetsiamError, match=message):
        from_dict(Config, data)


def test_ints_are_accepted_for_floats_and_config_is_frozen() -> None:
    cfg = from_dict(Config, {"window": {"interval_s": 2}, "detector": {"idle_evict_s": 60}})
    assert cfg.window.interval_s == 2.0 and isinstance(cfg.window.interval_s, float)
    with pytest.raises(AttributeError):
        cfg.window.length = 3  # type: ignore[misc]


def test_override_replaces_nested_values_and_ignores_none() -> None:
    cfg = override(Config(), {"kafka.bootstrap_servers": "h:1", "metrics.port": None,
                              "detector.debounce.raise_k": 1})
    assert cfg.kafka.bootstrap_servers == "h:1"
    assert cfg.metrics.port == Config().metrics.port
    assert cfg.detector.debounce.raise_k == 1


def test_password_never_in_repr_or_dict() -> None:
    cfg = override(Config(), {"kafka.sasl_password": "s3cret"})
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg.to_dict())


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(NetsiamError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("window: [1, 2\n")
    with pytest.raises(NetsiamError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(NetsiamError, match="top level must be a mapping"):
        load_config(bad)


@pytest.mark.parametrize(("value", "on"), [("", False), ("0", False), ("false", False), ("No", False), ("off", False),
                                           ("1", True), ("yes", True), ("true", True)])
def test_netsiam_debug_is_off_for_the_usual_spellings_of_off(value: str, on: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from netsiam.errors import debugging

    monkeypatch.setenv("NETSIAM_DEBUG", value)
    assert debugging() is on


def test_bootstrap_lists_the_kafka_clients_take_are_accepted() -> None:
    from netsiam.config import bootstrap_problem

    for ok in ("127.0.0.1:9092", "kafka-1:9093, kafka-2:9093", "a:9092,", "[::1]:9092", "::1", "2001:db8::",
               "PLAINTEXT://h:9092", "host"):
        assert bootstrap_problem(ok) is None, ok
        assert from_dict(Config, {"kafka": {"bootstrap_servers": ok}}).kafka.bootstrap_servers == ok
    # empty: refused where a client is made, not by an offline verb's config
    assert from_dict(Config, {"kafka": {"bootstrap_servers": ""}}).kafka.bootstrap_servers == ""
