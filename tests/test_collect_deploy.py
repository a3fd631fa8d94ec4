"""Collectors in operation: their systemd units (verified, hardened, invoking the CLI exactly as it
parses), their metrics (Prometheus naming, help text, scraped), and ``collect pcap`` capturing
without root: an unprivileged user holding only CAP_NET_RAW + CAP_NET_ADMIN, as the unit grants."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest
import yaml
from helpers import CAPTURE_SKIP, REPO, free_udp_base, needs_systemd_analyze, unit_directives
from prometheus_client import CollectorRegistry

from netsiam.cli import build_parser
from netsiam.collect.metrics import CollectMetrics

SYSTEMD = REPO / "deploy" / "systemd"
SIPP_UNIT = SYSTEMD / "netsiam-collect-sipp@.service"
PCAP_UNIT = SYSTEMD / "netsiam-collect-pcap.service"
LEARN_UNIT = SYSTEMD / "netsiam-learn.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def env_example(name: str) -> dict[str, str]:
    out = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value.strip('"')
    return out


def exec_argv(unit: Path, env: dict[str, str], instance: str = "") -> list[str]:
    """ExecStart as systemd runs it: ${VAR} one word, $VAR split on whitespace, %i the instance."""
    line = unit_directives(unit.read_text())["ExecStart"][-1].replace("%i", instance)
    argv: list[str] = []
    for word in shlex.split(line):
        if m := re.fullmatch(r"\$\{(\w+)\}", word):
            argv.append(env[m.group(1)])
        elif m := re.fullmatch(r"\$(\w+)", word):
            argv.extend(env[m.group(1)].split())
        else:
            argv.append(word)
    return argv


@pytest.mark.parametrize("unit, example, instance, kind", [
    (SIPP_UNIT, "collect-sipp.env.example", "sbc-1", "sipp"),
    (PCAP_UNIT, "collect-pcap.env.example", "", "pcap"),
])
def test_unit_invokes_the_cli_as_it_parses(unit: Path, example: str, instance: str, kind: str) -> None:
    d = unit_directives(unit.read_text())
    env = {k.split("=")[0]: k.split("=", 1)[1] for k in " ".join(d["Environment"]).split() if "=" in k}
    env |= env_example(example)
    argv = exec_argv(unit, env, instance)
    assert argv[0] == "/usr/local/bin/netsiam" and argv[1:3] == ["collect", kind]
    args = build_parser().parse_args(argv[1:])   # every flag the unit passes exists
    # publishes (no -o) to kafka.bootstrap_servers of the config, as the detector reads it
    assert args.bootstrap is None and args.output is None and args.config == "/etc/netsiam/config.yaml"
    assert args.metrics_port == {"sipp": 9109, "pcap": 9110}[kind]
    if kind == "sipp":
        assert args.source == "sbc-1" and args.follow and args.files == ["/var/log/sipp/sbc-1_stat.csv"]
    else:
        assert args.interface == "eth0" and args.filter == "port 5060"


def test_units_are_hardened() -> None:
    for unit in (SIPP_UNIT, PCAP_UNIT):
        one = {k: v[-1] for k, v in unit_directives(unit.read_text()).items()}
        for key, want in {"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                          "PrivateTmp": "yes", "Restart": "on-failure", "StateDirectory": "netsiam-collect",
                          "KillSignal": "SIGTERM"}.items():
            assert one.get(key) == want, f"{unit.name}: {key}={one.get(key)!r}"
        assert "ReadWritePaths" not in one and re.fullmatch(r"\d+[MG]", one["MemoryMax"])
    sipp = {k: v[-1] for k, v in unit_directives(SIPP_UNIT.read_text()).items()}
    assert sipp["CapabilityBoundingSet"] == "" and sipp["AmbientCapabilities"] == ""
    pcap = {k: v[-1] for k, v in unit_directives(PCAP_UNIT.read_text()).items()}
    caps = {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(pcap["AmbientCapabilities"].split()) == caps == set(pcap["CapabilityBoundingSet"].split())
    assert "AF_PACKET" in pcap["RestrictAddressFamilies"].split()
    assert "User" not in pcap, "no fixed user, no root: a dynamic user with two capabilities"


@needs_systemd_analyze
@pytest.mark.parametrize("unit, instance, threshold", [(SIPP_UNIT, "sbc-1", 20), (PCAP_UNIT, "", 30),
                                                       (LEARN_UNIT, "", 20)])
def test_unit_verifies_and_exposure_is_low(tmp_path: Path, unit: Path, instance: str, threshold: int) -> None:
    assert SYSTEMD_ANALYZE is not None
    stub = tmp_path / "netsiam"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    name = unit.name.replace("@.", f"@{instance}.") if instance else unit.name
    copy = tmp_path / name
    copy.write_text(unit.read_text().replace("/usr/local/bin/netsiam", str(stub)))
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:", SYSTEMD_LOG_LEVEL="notice")
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "netsiam" not in r.stdout + r.stderr, r.stdout + r.stderr
    probe = subprocess.run([SYSTEMD_ANALYZE, "security", "--help"], capture_output=True, text=True, timeout=30)
    if "--offline" not in probe.stdout:
        pytest.skip("systemd-analyze too old for `security --offline` (needs systemd >= 250)")
    # --threshold is the exposure x 10: the SIPp collector in the "OK" band (<= 2.0); the capture one
    # holds two network capabilities and packet sockets by design (<= 3.0)
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", f"--threshold={threshold}", "--no-pager",
                        str(copy)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def test_prometheus_scrapes_the_collectors() -> None:
    cfg = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {sc["job_name"]: sc for sc in cfg["scrape_configs"]}
    targets = {t for sc in jobs["netsiam-collect"]["static_configs"] for t in sc["targets"]}
    assert targets == {"127.0.0.1:9109", "127.0.0.1:9110"}


def test_metric_names_follow_prometheus_rules() -> None:
    reg = CollectorRegistry()
    CollectMetrics(reg, "sipp")
    fams = list(reg.collect())
    assert len(fams) >= 10
    for fam in fams:
        assert fam.name.startswith("netsiam_collect_"), fam.name
        assert fam.documentation and len(fam.documentation) > 20, fam.name
        assert not fam.name.endswith("_total"), "prometheus_client strips _total from counter families"
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples)
        assert all(s.labels.get("collector") == "sipp" for s in fam.samples), fam.name
        unit_words = ("seconds", "bytes", "records", "sources", "up")
        if fam.type == "gauge":
            assert fam.name.split("_")[-1] in unit_words, fam.name


# -- capture without root -------------------------------------------------------------------------------

SETPRIV = shutil.which("setpriv")
NOBODY = 65534


def _can_drop_root() -> str:
    if os.geteuid() != 0:
        return "needs root to start a process as an unprivileged user with chosen capabilities"
    if SETPRIV is None:
        return "setpriv not installed (util-linux)"
    return CAPTURE_SKIP


@pytest.mark.skipif(bool(_can_drop_root()), reason=_can_drop_root() or "possible")
def test_capture_as_an_unprivileged_user_with_two_capabilities() -> None:
    """As the unit runs it: not root, only CAP_NET_RAW + CAP_NET_ADMIN (ambient, so dumpcap inherits
    them). Without them the same command fails with dumpcap's reason, in one line."""
    with tempfile.TemporaryDirectory(prefix="netsiam-nobody-") as tmp:   # pytest's tmp dirs are root-only
        tmp_path = Path(tmp)
        tmp_path.chmod(0o777)
        _capture_as_nobody(tmp_path)


def _capture_as_nobody(tmp_path: Path) -> None:
    assert SETPRIV is not None
    port = free_udp_base(2)
    out = tmp_path / "out.jsonl"
    base = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    caps = ["--inh-caps=+net_raw,+net_admin", "--ambient-caps=+net_raw,+net_admin"]
    cmd = [sys.executable, "-m", "netsiam", "collect", "pcap", "--interface", "lo", "--filter", f"udp port {port}",
           "-o", str(out)]
    env = dict(os.environ, HOME=str(tmp_path))
    r = subprocess.run([*base, *cmd], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "capture on lo ended" in r.stderr.splitlines()[-1], r.stderr[-2000:]
    assert "permission" in r.stderr.lower()

    log = tmp_path / "collect.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([*base, *caps, *cmd], cwd=REPO, stderr=f, env=env)
    try:
        deadline = time.monotonic() + 30
        while "Capturing on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        # three calls' INVITEs a second, nobody answers, until a record comes out: "Capturing on" can come
        # before the capture sees packets on a busy machine, so a single early burst may go unseen
        sent = 0
        deadline = time.monotonic() + 30
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not (out.exists() and out.read_bytes().strip()) and time.monotonic() < deadline:
                for _ in range(3):
                    s.sendto(_invite(port, f"call-{sent}"), ("127.0.0.1", port))
                    sent += 1
                time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0, log.read_text()[-2000:]
    recs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert recs and {r["source"] for r in recs} == {f"127.0.0.1:{port}"}
    assert 3 <= sum(r["metrics"]["OutgoingCall"] for r in recs) <= sent   # each INVITE once; exact: test_collect_pcap


def _invite(port: int, call_id: str) -> bytes:
    return (f"INVITE sip:svc@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port + 1};branch=z9hG4bK-{call_id}\r\n"
            f"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:svc@127.0.0.1:{port}>\r\nCall-ID: {call_id}\r\n"
            "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def test_learn_unit_invokes_the_cli_as_it_parses_and_may_write_only_the_models() -> None:
    one = {k: v[-1] for k, v in unit_directives(LEARN_UNIT.read_text()).items()}
    argv = shlex.split(one["ExecStart"])
    assert argv[0] == "/usr/local/bin/netsiam" and argv[1] == "learn"
    args = build_parser().parse_args(argv[1:])
    assert args.config == "/etc/netsiam/config.yaml" and args.model is None   # detector.model, as the daemon
    for key, want in {"User": "netsiam-learn", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                      "ReadWritePaths": "/opt/netsiam-models", "Restart": "on-failure", "Type": "notify",
                      "RestartPreventExitStatus": "2 3 4", "CapabilityBoundingSet": "", "UMask": "0022"}.items():
        assert one.get(key) == want, f"{key}={one.get(key)!r}"

