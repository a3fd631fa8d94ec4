"""Alerting as an operator receives it: deploy/alertmanager/alertmanager.yml checked by ``amtool``, its
routes and inhibitions exercised on a real Alertmanager (Debian ``prometheus-alertmanager``), and every
alert rule's ``runbook_url`` pointing at a section of docs/runbook.md. (The rules themselves are
unit-tested with promtool in tests/test_deploy.py.)"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, wait_until

ALERTMANAGER_YML = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = REPO / "deploy" / "prometheus" / "netsiam.rules.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (apt-get install prometheus-alertmanager)")
needs_alertmanager = pytest.mark.skipif(ALERTMANAGER is None,
                                        reason="alertmanager not installed (apt-get install prometheus-alertmanager)")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the headings of a markdown text."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_every_alert_has_a_runbook_section() -> None:
    sections = anchors(RUNBOOK.read_text())
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url", "")
        assert url == f"docs/runbook.md#{rule['alert'].lower()}", f"{rule['alert']}: runbook_url {url!r}"
        assert url.split("#")[1] in sections, f"docs/runbook.md has no section for {rule['alert']}"


@needs_amtool
def test_amtool_check_config() -> None:
    r = subprocess.run([AMTOOL or "amtool", "check-config", str(ALERTMANAGER_YML)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@needs_amtool
@pytest.mark.parametrize(("labels", "receiver"), [
    ({"alertname": "NetsiamFaultActive", "fault": "blocked", "severity": "critical"}, "noc-page"),
    ({"alertname": "NetsiamFaultActive", "fault": "silent", "severity": "warning"}, "noc-ticket"),
    ({"alertname": "NetsiamInputStalled", "severity": "critical"}, "noc-page"),
    ({"alertname": "SomethingElse"}, "noc-ticket"),
])
def test_routes_by_severity(labels: dict[str, str], receiver: str) -> None:
    r = subprocess.run([AMTOOL or "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
                        *(f"{k}={v}" for k, v in labels.items())], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == receiver, r.stdout + r.stderr


def test_routes_group_by_fault() -> None:
    route = yaml.safe_load(ALERTMANAGER_YML.read_text())["route"]
    assert route["group_by"] == ["alertname", "fault"]  # a mass outage is one notification per fault
    assert not any("group_by" in r for r in route.get("routes", [])), "child routes inherit the grouping"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen([ALERTMANAGER or "alertmanager", f"--config.file={ALERTMANAGER_YML}",
                             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/-/ready") is not None or proc.poll() is not None, 30, "alertmanager ready")
        assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()[-2000:]
        yield url
    finally:
        proc.terminate()   # only the process this test started
        proc.wait(10)
        log.close()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except OSError:
        return None


def _post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = json.dumps([{"labels": a, "startsAt": now} for a in alerts]).encode()
    req = urllib.request.Request(f"{url}/api/v2/alerts", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def _states(url: str) -> dict[tuple[str, str], str]:
    """(alertname, source or fault) -> active | suppressed."""
    alerts = json.loads(_get(f"{url}/api/v2/alerts") or b"[]")
    return {(a["labels"]["alertname"], a["labels"].get("source") or a["labels"].get("fault", "")):
            a["status"]["state"] for a in alerts}


def _fault(source: str, fault: str, severity: str = "warning") -> dict[str, str]:
    return {"alertname": "NetsiamFaultActive", "job": "netsiam-detector", "instance": "d1:9108", "source": source,
            "fault": fault, "severity": severity}


@needs_alertmanager
@pytest.mark.slow
def test_inhibitions_on_a_real_alertmanager(alertmanager: str) -> None:
    url = alertmanager
    _post_alerts(url, [_fault("sbc-1", "silent"), _fault("sbc-2", "silent"), _fault("sbc-3", "blocked", "critical")])
    wait_until(lambda: len(_states(url)) == 3, 10, "alerts received")
    assert set(_states(url).values()) == {"active"}
    # a mass silent fault mutes the silent sources' alerts, not the blocked one
    _post_alerts(url, [{"alertname": "NetsiamMassFault", "job": "netsiam-detector", "fault": "silent",
                        "severity": "critical"}])
    want = {("NetsiamFaultActive", "sbc-1"): "suppressed", ("NetsiamFaultActive", "sbc-2"): "suppressed",
            ("NetsiamFaultActive", "sbc-3"): "active", ("NetsiamMassFault", "silent"): "active"}
    wait_until(lambda: _states(url) == want, 10, f"mass fault inhibits its sources: {_states(url)}")
    # the input stalled: every fault alert of that detector job is muted, the stall itself is not
    _post_alerts(url, [{"alertname": "NetsiamInputStalled", "job": "netsiam-detector", "instance": "d1:9108",
                        "severity": "critical"}])
    wait_until(lambda: _states(url) == {**{k: "suppressed" for k in want}, ("NetsiamInputStalled", ""): "active"}, 10,
               f"input stalled inhibits the fault alerts: {_states(url)}")
