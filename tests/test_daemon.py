"""The daemon in-process against the real broker: labelled episodes, dead letters, metrics and
health, hot reload. (Signals and crash recovery run it as a subprocess: test_daemon_signals.py.)"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from helpers import (
    Model,
    bad_lines,
    check_episodes,
    detect_offline,
    events_of,
    http_get,
    labelled_trace,
    labelled_windows,
    make_config,
    produce,
    read_topic,
    running,
    save_artifact,
    value,
    wait_until,
)
from prometheus_client import CollectorRegistry

from netsiam.config import Config, DebounceConfig
from netsiam.evidence import debounce_inputs
from netsiam.replay import replay_lines
from netsiam.schemas import load_schema
from netsiam.schemas.deadletter import validate_dead_letter
from netsiam.serving import default_model_path, load_artifact
from netsiam.trainer.detection import episodes_from_intervals


@pytest.fixture(scope="module")
def labelled() -> tuple[list[bytes], list[Any]]:
    return labelled_trace()


@pytest.mark.slow
def test_labelled_trace_gives_one_raised_and_one_cleared_per_episode(
        broker: Any, topics: Any, model: Model, model_dir: Path, labelled: Any) -> None:
    lines, labels = labelled
    cfg = make_config(broker, topics)
    # what the offline evaluation computes for the same encoder and trace
    from netsiam.traceio import Record

    w, x, _, _ = labelled_windows([Record(**orjson.loads(b)) for b in lines], labels, model.window)
    served = load_artifact(model_dir)   # the very encoder served
    offline, _ = detect_offline(served, served.embed(x), x, w, cfg.detector.debounce)
    n_events = len(offline) + sum(e.cleared_at is not None for e in offline)
    replay_lines(lines, broker.bootstrap, topics.samples)
    with running(cfg, model_dir) as d:
        msgs = read_topic(broker.bootstrap, topics.faults, until=lambda m: len(m) >= n_events, timeout_s=60)
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= len(lines), 30, "all records consumed")
        port = d.metrics_port
        assert port
        status, body = http_get(port, "/healthz")
        assert (status, body.strip()) == (200, "ok")
        assert http_get(port, "/livez")[0] == 200
        _, text = http_get(port, "/metrics")
        assert 'netsiam_model_info{version="test-1+p' in text
        wait_until(lambda: value(d, "netsiam_broker_up") == 1, 10, "broker_up")
        # a housekeeping round after the last record sets the gauges (a round may wait on the broker)
        wait_until(lambda: [value(d, "netsiam_consumer_lag", topic=topics.samples, partition=str(p))
                            for p in range(4)] == [0, 0, 0, 0] and value(d, "netsiam_sources_tracked") == 6,
                   15, "lag 0 on every partition, 6 sources tracked")
        assert value(d, "netsiam_records_valid_total") == len(lines)
        assert value(d, "netsiam_record_to_event_seconds_count") == n_events
        assert value(d, "netsiam_events_pending") == 0
        assert value(d, "netsiam_commits_total") >= 1
    evs = events_of(msgs)
    assert len(evs) == n_events
    assert all(m.key == orjson.loads(m.value)["source"].encode() for m in msgs)
    check_episodes(evs, labels, max(orjson.loads(b)["ts"] for b in lines))
    assert sorted((e.source, e.fault, e.started_at, e.raised_at, e.cleared_at) for e in offline) == sorted(
        (r["source"], r["fault"], r["started_at"], r["window_end"],
         next((c["window_end"] for c in evs if c["state"] == "cleared" and c["source"] == r["source"]
               and c["started_at"] == r["started_at"]), None))
        for r in evs if r["state"] == "raised")
    for e in evs:  # wall clock only in detected_at; the model version is the served one
        assert e["detected_at"] > e["window_end"] and e["model_version"].startswith("test-1+p")


@pytest.mark.slow
def test_bad_input_goes_to_the_dead_letter_topic(broker: Any, topics: Any, model_dir: Path,
                                                  labelled: Any) -> None:
    lines, _ = labelled
    good = lines[:600]
    cases = bad_lines()
    # bad records interleaved with good ones, all on partition 0 so offsets are known
    values: list[bytes | None] = []
    reasons: dict[int, str] = {}
    for i, line in enumerate(good):
        values.append(line)
        if i % 40 == 5 and cases:
            v, why = cases.pop(0)
            reasons[len(values)] = why
            values.append(v)
    values.append(good[-1])  # a duplicate of the last sample of its source
    reasons[len(values) - 1] = "duplicate"
    produce(broker.bootstrap, topics.samples, values, keys=[b"k"] * len(values), partition=0)
    cfg = make_config(broker, topics)
    with running(cfg, model_dir) as d:
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= len(values), 30, "all consumed")
        dead = read_topic(broker.bootstrap, topics.deadletter, until=lambda m: len(m) >= len(reasons))
        consumed = value(d, "netsiam_records_consumed_total")
        valid = value(d, "netsiam_records_valid_total")
        invalid = {r: value(d, "netsiam_records_invalid_total", reason=r) for r in set(reasons.values())}
    assert consumed == len(values) == valid + len(dead)                     # nothing silently dropped
    assert invalid == {r: list(reasons.values()).count(r) for r in set(reasons.values())}
    got = {}
    dl_schema = jsonschema.Draft202012Validator(load_schema("deadletter"))
    for m in dead:
        j = orjson.loads(m.value)
        dl_schema.validate(j)                                                # the contract, as consumers see it
        validate_dead_letter(j)
        assert (j["topic"], j["partition"]) == (topics.samples, 0) and j["detail"]
        orig = values[j["offset"]]
        assert (j["value_b64"] is None) == (orig is None)
        if orig is not None:
            assert base64.b64decode(j["value_b64"]) == orig and j["value_size"] == len(orig)
        got[j["offset"]] = j["reason"]
    assert got == reasons


@pytest.mark.slow
def test_reload_refuses_a_corrupt_artifact_and_picks_up_a_good_one(
        broker: Any, topics: Any, model: Model, model_dir: Path, labelled: Any, tmp_path: Path) -> None:
    lines, _ = labelled
    live = tmp_path / "model"
    shutil.copytree(model_dir, live)
    cfg = make_config(broker, topics)
    third = len(lines) // 3
    with running(cfg, live) as d:
        replay_lines(lines[:third], broker.bootstrap, topics.samples)
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= third, 30, "first third")
        old = d.pipeline.artifact.version

        # a torn copy: the encoder no longer matches the manifest -> refused, old model serves on
        (live / "encoder.keras").write_bytes(b"not a keras file")
        wait_until(lambda: value(d, "netsiam_model_reload_failures_total") == 1, 10, "refusal")
        replay_lines(lines[third:2 * third], broker.bootstrap, topics.samples)
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= 2 * third, 30, "second third")
        assert d.pipeline.artifact.version == old
        assert value(d, "netsiam_model_info", version=old) == 1
        windows_before = value(d, "netsiam_windows_embedded_total")

        # a good artifact (new version) appears: picked up without a restart
        save_artifact(live, model.head, model.prototypes, model.window, "test-2")
        wait_until(lambda: value(d, "netsiam_model_reloads_total") == 1, 30, "reload")
        new = d.pipeline.artifact.version
        assert new.startswith("test-2+p") and value(d, "netsiam_model_info", version=new) == 1
        assert d.registry.get_sample_value("netsiam_model_info", {"version": old}) is None
        replay_lines(lines[2 * third:], broker.bootstrap, topics.samples)
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= len(lines), 30, "last third")
        # windows are embedded on the worker thread after their records are consumed: wait for them
        wait_until(lambda: value(d, "netsiam_windows_embedded_total") > windows_before, 30, "new model embeds")
        assert value(d, "netsiam_model_reload_failures_total") == 1

        # SIGHUP's path: reload on request even though nothing changed on disk
        d.request_reload()
        wait_until(lambda: value(d, "netsiam_model_reloads_total") == 2, 30, "forced reload")
    evs = events_of(read_topic(broker.bootstrap, topics.faults))
    assert {e["model_version"].split("+")[0] for e in evs} == {"test-1", "test-2"}


@pytest.mark.parametrize("ready", [True, False])
def test_health_endpoints(ready: bool) -> None:
    from netsiam.detector.health import HealthServer

    reg = CollectorRegistry()
    from netsiam.detector.metrics import DetectorMetrics

    DetectorMetrics(reg)
    srv = HealthServer(reg, "127.0.0.1", 0, lambda: (ready, "ok" if ready else "no partitions assigned")).start()
    try:
        status, body = http_get(srv.port, "/healthz")
        assert (status, body.strip()) == ((200, "ok") if ready else (503, "not ready: no partitions assigned"))
        assert http_get(srv.port, "/livez") == (200, "ok\n")
        status, body = http_get(srv.port, "/metrics")
        assert status == 200 and "netsiam_records_invalid_total" in body
        assert http_get(srv.port, "/nope")[0] == 404
    finally:
        srv.stop()


def test_security_settings_pass_through_and_the_password_is_never_printed() -> None:
    from netsiam.config import KafkaConfig
    from netsiam.errors import NetsiamError
    from netsiam.kafka_io import client_kwargs, consumer_kwargs, producer_kwargs

    k = KafkaConfig(bootstrap_servers="a:1, b:2", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                    sasl_username="u", sasl_password="s3cret", ssl_cafile="/ca.pem")
    kw = client_kwargs(k)
    assert kw["bootstrap_servers"] == ["a:1", "b:2"]
    assert (kw["security_protocol"], kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"],
            kw["ssl_cafile"]) == ("SASL_SSL", "SCRAM-SHA-512", "u", "s3cret", "/ca.pem")
    c = consumer_kwargs(k, "h:9", "g")
    assert c["bootstrap_servers"] == ["h:9"] and c["enable_auto_commit"] is False and c["group_id"] == "g"
    assert (c["session_timeout_ms"], c["heartbeat_interval_ms"]) == (6000, 1000)
    assert producer_kwargs(k, None)["acks"] == "all"
    assert "s3cret" not in repr(k) and "s3cret" not in str(Config(kafka=k).to_dict())
    with pytest.raises(NetsiamError, match="sasl_mechanism"):
        client_kwargs(KafkaConfig(security_protocol="SASL_PLAINTEXT"))


@pytest.mark.slow
@pytest.mark.skipif(not default_model_path().is_dir(), reason="no shipped model yet (make model)")
@pytest.mark.parametrize("deb", [DebounceConfig(), DebounceConfig(name_on_mark=False)], ids=["defaults", "no_name_on_mark"])
def test_shipped_model_daemon_acts_exactly_as_the_offline_evaluation(broker: Any, topics: Any, labelled: Any,
                                                                     deb: DebounceConfig) -> None:
    """With the real trained model: events on Kafka == the evaluation's events, most episodes caught; also
    with name_on_mark turned the other way."""
    lines, labels = labelled
    path = default_model_path()
    art = load_artifact(path)
    replay_lines(lines, broker.bootstrap, topics.samples)
    with running(make_config(broker, topics, debounce=deb), path) as d:
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= len(lines), 60, "all consumed")
        time.sleep(1.0)
    evs = events_of(read_topic(broker.bootstrap, topics.faults))
    from netsiam.traceio import Record

    w, x, _, _ = labelled_windows([Record(**orjson.loads(b)) for b in lines], labels, art.window)
    emb = art.embed(x)
    offline, _ = detect_offline(art, emb, x, w, deb)
    if deb.name_on_mark:   # marks show in this trace's limits, so both trackers read them
        marked = debounce_inputs(x, w.raw, art.features, art.manifest, classes=art.prototypes.classes).marked
        assert marked is not None and sum(bool(m) for m in marked) > 100
    assert sorted((e.source, e.fault, e.started_at, e.raised_at) for e in offline) == sorted(
        (e["source"], e["fault"], e["started_at"], e["window_end"]) for e in evs if e["state"] == "raised")
    eps = episodes_from_intervals(labels)
    caught = [ep for ep in eps if any(e["source"] == ep.source and e["state"] == "raised" and e["fault"] == ep.label
                                      and ep.start - 30 <= e["window_end"] <= ep.end + 30 for e in evs)]
    assert len(caught) >= 0.8 * len(eps), f"{len(caught)}/{len(eps)} episodes raised with the right fault"
