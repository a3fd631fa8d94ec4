"""``kafka.client: confluent-kafka``: replay and the collectors publish through librdkafka.

On the real embedded broker: the same trace replayed with either client gives the same records, keys,
partitions and order per source; a collector's run (and its broker outage: test_collect_publish.py)
publishes exactly the imported rows; TLS settings reach librdkafka. Without the package (simulated by
a failing import) the choice is a one-line configuration error, exit 4. The broker tests skip where
confluent-kafka is not installed (``pip install 'netsiam[confluent]'``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import REPO, imported, needs_confluent, read_topic, unique

from netsiam.broker import create_topics
from netsiam.config import KafkaConfig, TopicsConfig, from_dict
from netsiam.errors import EXIT_CONFIG, ConfigError
from netsiam.producer import CONFLUENT_HINT, producer_factory
from netsiam.replay import replay_lines

DATA_B = REPO / "tests" / "data" / "sipp_b_stat.csv"
SECRET = "hunter2-S3CR3T"


def _topics(partitions: int = 4) -> TopicsConfig:
    t = unique("ck")
    return TopicsConfig(samples=f"{t}.samples", faults=f"{t}.faults", deadletter=f"{t}.dl",
                        samples_partitions=partitions)


def _trace(n: int = 3000) -> list[bytes]:
    """7 sources interleaved, plus a line that does not parse and one without a source (both keyless)."""
    lines = [orjson.dumps({"source": f"src-{i % 7}", "ts": 1795384000.0 + i // 7, "metrics": {"OutgoingCall": i}})
             for i in range(n)]
    return [*lines[:10], b"{broken", *lines[10:20], b'{"ts": 1795384001, "metrics": {}}', *lines[20:]]


def _by_key(msgs: list[Any]) -> dict[bytes | None, list[tuple[int, bytes]]]:
    """key -> [(partition, value)] in offset order; keyless values sorted (they go to any partition)."""
    out: dict[bytes | None, list[tuple[int, bytes]]] = {}
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        out.setdefault(m.key, []).append((m.partition, m.value))
    if None in out:
        out[None] = sorted((0, v) for _, v in out[None])
    return out


def _env(**over: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **over}


# -- configuration ----------------------------------------------------------------------------------
def test_client_key_is_validated() -> None:
    assert KafkaConfig().client == "kafka-python"
    assert from_dict(KafkaConfig, {"client": "confluent-kafka"}).client == "confluent-kafka"
    with pytest.raises(ConfigError, match="kafka.client: must be kafka-python or confluent-kafka"):
        from_dict(KafkaConfig, {"client": "librdkafka"})


def test_missing_confluent_kafka_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before any connection: the collector's sink and replay fail at once, broker or not."""
    from prometheus_client import CollectorRegistry

    from netsiam.cli import main
    from netsiam.collect.metrics import CollectMetrics
    from netsiam.collect.sink import KafkaSink

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # `import confluent_kafka` -> ImportError
    kcfg = KafkaConfig(client="confluent-kafka", bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ConfigError) as e:
        producer_factory(kcfg, None)
    assert str(e.value) == CONFLUENT_HINT and "pip install 'netsiam[confluent]'" in str(e.value)
    with pytest.raises(ConfigError):
        KafkaSink("127.0.0.1:1", "t", CollectMetrics(CollectorRegistry(), "sipp"), kafka=kcfg)

    trace = tmp_path / "t.jsonl"
    trace.write_bytes(_trace(3)[0] + b"\n")
    monkeypatch.setenv("NETSIAM_KAFKA__CLIENT", "confluent-kafka")
    monkeypatch.delenv("NETSIAM_CONFIG", raising=False)
    assert main(["replay", str(trace), "--bootstrap", "127.0.0.1:1", "--max", "--quiet"]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(CONFLUENT_HINT), err
    assert not any("Traceback" in line for line in err)


@needs_confluent
def test_security_settings_map_to_librdkafka() -> None:
    from netsiam.confluent_io import producer_config, security_config

    k = KafkaConfig(bootstrap_servers="h1:9093, h2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                    sasl_username="svc", sasl_password=SECRET, ssl_cafile="/ca.pem", ssl_certfile="/c.pem",
                    ssl_keyfile="/k.pem", ssl_password="kp", ssl_crlfile="/crl.pem", ssl_ciphers="HIGH",
                    ssl_check_hostname=False)
    assert security_config(k) == {
        "bootstrap.servers": "h1:9093,h2:9093", "client.id": "netsiam", "security.protocol": "SASL_SSL",
        "reconnect.backoff.max.ms": 1000, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
        "sasl.password": SECRET, "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/k.pem", "ssl.key.password": "kp", "ssl.crl.location": "/crl.pem",
        "ssl.cipher.suites": "HIGH", "ssl.endpoint.identification.algorithm": "none"}
    # PLAINTEXT: no password, no TLS file handed over
    plain = security_config(KafkaConfig(sasl_username="svc", sasl_password=SECRET, ssl_cafile="/ca.pem"))
    assert SECRET not in repr(plain) and not any(p.startswith(("sasl.", "ssl.")) for p in plain)
    # the collectors' producer: one request in flight, every ack reported; replay: failures only
    sink = producer_config(KafkaConfig(), "b:1", idempotent=False, max_buffered=5)
    assert (sink["acks"], sink["max.in.flight.requests.per.connection"], sink["enable.idempotence"]) == ("all", 1, False)
    assert sink["queue.buffering.max.messages"] == 5 and "delivery.report.only.error" not in sink
    assert sink["partitioner"] == "murmur2_random"
    assert producer_config(KafkaConfig(), "b:1", errors_only=True)["delivery.report.only.error"] is True
    for bad, match in ((KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI"), "GSSAPI is not mapped"),
                       (KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                                    sasl_oauth_token_provider="m:p"), "OAUTHBEARER is not mapped"),
                       (KafkaConfig(sasl_oauth_token_provider="m:p"), "token provider cannot be used"),
                       (KafkaConfig(security_protocol="SASL_SSL"), "sasl_mechanism is required")):
        with pytest.raises(ConfigError, match=match):
            security_config(bad)
    with pytest.raises(ConfigError, match="use kafka.client: kafka-python"):
        producer_factory(KafkaConfig(client="confluent-kafka", security_protocol="SASL_SSL", sasl_mechanism="GSSAPI"),
                         None)
    # the daemon's samples consumer: the same security, the group settings of kafka_io.consumer_kwargs
    from netsiam.confluent_consumer import consumer_config

    cons = consumer_config(dataclasses.replace(k, auto_offset_reset="latest", session_timeout_ms=7000), None, "g")
    assert {p: v for p, v in cons.items() if p in security_config(k)} == security_config(k)
    assert (cons["group.id"], cons["enable.auto.commit"], cons["auto.offset.reset"], cons["session.timeout.ms"]) \
        == ("g", False, "latest", 7000)


# -- on the embedded broker -------------------------------------------------------------------------
@pytest.mark.slow
@needs_confluent
def test_replay_publishes_the_same_records_as_kafka_python(broker: Any, tmp_path: Path) -> None:
    """``netsiam replay`` with NETSIAM_KAFKA__CLIENT=confluent-kafka vs kafka-python in-process: every
    line byte for byte, the same key, partition and order per source (murmur2 on both)."""
    lines = _trace()
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    ref, ck = _topics(), _topics()
    create_topics(broker.bootstrap, ref)
    create_topics(broker.bootstrap, ck)
    stats = replay_lines(lines, broker.bootstrap, ref.samples)
    assert (stats.sent, stats.failed) == (len(lines), 0)
    p = subprocess.run([sys.executable, "-m", "netsiam", "replay", str(trace), "--bootstrap", broker.bootstrap,
                        "--topic", ck.samples, "--max", "--quiet"], capture_output=True, text=True, cwd=REPO,
                       timeout=120, env=_env(NETSIAM_KAFKA__CLIENT="confluent-kafka"))
    assert p.returncode == 0, p.stderr
    assert f"sent {len(lines)} records to {ck.samples}" in p.stdout, p.stdout

    def read(topic: str) -> list[Any]:
        return read_topic(broker.bootstrap, topic, until=lambda ms: len(ms) >= len(lines), idle_s=0.5)

    want, got = _by_key(read(ref.samples)), _by_key(read(ck.samples))
    assert sum(len(v) for v in got.values()) == len(lines)
    assert got == want
    for key, msgs in got.items():
        if key is None:
            assert sorted(v for _, v in msgs) == sorted([b"{broken", lines[21]])
            continue
        assert [v for _, v in msgs] == [line for line in lines if b'"' + key + b'"' in line]
        assert len({part for part, _ in msgs}) == 1


@pytest.mark.slow
@needs_confluent
def test_collect_sipp_publishes_the_import(broker: Any, tmp_path: Path) -> None:
    """``netsiam collect sipp --bootstrap`` with confluent-kafka: the topic holds exactly ``import
    sipp``'s records of the file, in order, and the state file advances to the last one."""
    tc = _topics(2)
    create_topics(broker.bootstrap, tc)
    state = tmp_path / "state.json"
    p = subprocess.run([sys.executable, "-m", "netsiam", "collect", "sipp", str(DATA_B), "--source", "s",
                        "--bootstrap", broker.bootstrap, "--topic", tc.samples, "--state", str(state),
                        "--metrics-port", "0"], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env=_env(NETSIAM_KAFKA__CLIENT="confluent-kafka"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "publishing with confluent-kafka" in p.stderr
    want = imported([DATA_B])
    msgs = read_topic(broker.bootstrap, tc.samples, until=lambda ms: len(ms) >= len(want), idle_s=0.5)
    assert [m.value for m in sorted(msgs, key=lambda m: m.offset)] == want
    assert {m.key for m in msgs} == {b"s"} and len({m.partition for m in msgs}) == 1
    assert orjson.loads(state.read_bytes())["last_ts"] == orjson.loads(want[-1])["ts"]


@pytest.mark.slow
@needs_confluent
def test_replay_over_tls_to_the_embedded_broker(tmp_path: Path) -> None:
    """The ssl_* settings reach librdkafka: a replay over TLS (the broker's self-signed certificate as
    CA, host name checked) arrives; trusting another CA fails with a one-line ServiceError."""
    from test_reliability_security import _self_signed

    from netsiam.broker import start_broker
    from netsiam.errors import ServiceError

    cert, key, _ = _self_signed(tmp_path)
    other, _, _ = _self_signed(tmp_path, "other")
    tc = _topics(2)
    tls = KafkaConfig(security_protocol="SSL", ssl_cafile=str(cert))
    lines = _trace(200)
    with start_broker(0, cert=str(cert), key=str(key), topics=tc, kafka=tls, log_path=tmp_path / "b.log") as bp:
        ck = KafkaConfig(client="confluent-kafka", security_protocol="SSL", ssl_cafile=str(cert))
        stats = replay_lines(lines, bp.bootstrap, tc.samples, kafka=ck)
        assert (stats.sent, stats.failed) == (len(lines), 0)
        msgs = read_topic(bp.bootstrap, tc.samples, kafka=tls, until=lambda ms: len(ms) >= len(lines), idle_s=0.3)
        assert sorted(m.value for m in msgs) == sorted(lines)
        wrong = KafkaConfig(client="confluent-kafka", security_protocol="SSL", ssl_cafile=str(other))
        with pytest.raises(ServiceError, match="cannot reach the broker"):
            replay_lines(lines[:1], bp.bootstrap, tc.samples, kafka=wrong)


@needs_confluent
def test_repeated_librdkafka_lines_are_held_back() -> None:
    """A broker away: librdkafka's reconnect failures, ~20 a second, come out once a minute with a count."""
    import logging

    from netsiam.confluent_io import RepeatFilter

    now = [0.0]
    f = RepeatFilter(60.0, clock=lambda: now[0])

    def line(msg: str) -> logging.LogRecord:
        return logging.LogRecord("kafka.rdkafka", logging.ERROR, __file__, 1, "%s", (msg,), None)

    fail = "FAIL [netsiam#consumer-1] [thrd:127.0.0.1:9092/bootstrap]: Connect failed (after {}ms in state CONNECT)"
    passed = []
    for i in range(200):                      # 100 failures in 5 s, then one every 0.6 s to 64 s
        now[0] = i * 0.05 if i < 100 else 5 + (i - 100) * 0.6
        rec = line(fail.format(i % 7))
        if f.filter(rec):
            passed.append(rec.getMessage())
    assert f.filter(line("another line")) and len(passed) == 2
    assert passed[0] == fail.format(0)
    assert passed[1].startswith(fail.format(0)[:40]) and passed[1].endswith(" like it in the last 60 s)")
