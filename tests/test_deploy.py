"""Operations artefacts in deploy/: systemd unit, Prometheus config and rules, Grafana dashboard,
and the dashboard picture (netsiam.dashboard).

Tools are used when present and the test is skipped with the reason otherwise:
``systemd-analyze`` (unit verification, offline security score), ``promtool`` (config, rules,
rule unit tests) and ``prometheus`` (every dashboard and rule expression is run against a real
server; the renderer is tested against a real server scraping synthetic ``netsiam_*`` metrics).
``LocalPrometheus`` starts and stops such a server in a temporary directory.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import math
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
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import yaml
from helpers import needs_systemd_analyze, unit_directives

from netsiam.dashboard.cli import main as dashboard_main
from netsiam.dashboard.grafana import grafana_json
from netsiam.dashboard.panels import ANNOTATIONS, DASHBOARD_UID, DETECTOR_JOB, LEARN_JOB, PANELS, VARIABLES
from netsiam.dashboard.picture import cli_plot_dashboard, render_dashboard
from netsiam.dashboard.prometheus import expand, fetch_panels
from netsiam.dashboard.prometheus import scrape_interval as prometheus_scrape_interval
from netsiam.errors import NetsiamError
from netsiam.trainer.learnmetrics import ACTIONS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "netsiam-detect.service"
DROPIN = DEPLOY / "systemd" / "netsiam-detect.service.d" / "credentials.conf"
PROM_DIR = DEPLOY / "prometheus"
RULES = PROM_DIR / "netsiam.rules.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "netsiam.json"
METRICS_PY = ROOT / "detector" / "metrics.py"
LEARN_METRICS_PY = ROOT / "trainer" / "learnmetrics.py"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None,
                                      reason="prometheus not installed (apt-get install prometheus)")

REQUIRED_ALERTS = {
    "NetsiamFaultActive", "NetsiamDetectorDown", "NetsiamConsumerLagGrowing", "NetsiamDeadLetterRateHigh",
    "NetsiamModelReloadFailing", "NetsiamRecordToEventLatencyHigh", "NetsiamBrokerUnreachable",
    "NetsiamMassFault", "NetsiamInputStalled", "NetsiamLearnDown", "NetsiamFeedbackDeadLettered",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan", "atan2"}
SYNTHETIC_METRICS = {"up"}  # written by Prometheus itself
TARGET_LABELS = {"job", "instance"}


# ---------------------------------------------------------------------------------------------
# helpers: metric catalogue, PromQL names, a real Prometheus
# ---------------------------------------------------------------------------------------------


def metric_catalogue(files: Sequence[Path] = (METRICS_PY, LEARN_METRICS_PY)) -> dict[str, set[str]]:
    """Exported series name -> label names, parsed from the daemon's and learn's metrics modules (no import)."""
    out: dict[str, set[str]] = {}
    for f in files:
        out |= _catalogue(ast.parse(f.read_text()))
    return out


def _catalogue(tree: ast.Module) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        # a custom collector: GaugeMetricFamily(self.NAME, ..., labels=[...]) or GaugeMetricFamily(*self.X,
        # labels=[...]), NAME a class constant "name" and X a class constant ("name", "help"), read at scrape time
        consts = {t.id: a.value for a in cls.body if isinstance(a, ast.Assign) for t in a.targets
                  if isinstance(t, ast.Name)}
        for c in ast.walk(cls):
            if not (isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "GaugeMetricFamily"):
                continue
            first = c.args[0]
            ref = first.value if isinstance(first, ast.Starred) else first
            assert isinstance(ref, ast.Attribute), ast.dump(first)
            const = consts[ref.attr]
            name_node = const.elts[0] if isinstance(const, ast.Tuple) else const
            assert isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)
            labels_kw = next(k.value for k in c.keywords if k.arg == "labels")
            assert isinstance(labels_kw, ast.List)
            out[name_node.value] = {e.value for e in labels_kw.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        kind = node.func.id
        if kind not in ("Counter", "Gauge", "Histogram", "Summary") or not node.args:
            continue
        first = node.args[0]
        assert isinstance(first, ast.Constant) and isinstance(first.value, str)
        name: str = first.value
        label_node: ast.expr | None = node.args[2] if len(node.args) > 2 else None
        for kw in node.keywords:
            if kw.arg == "labelnames":
                label_node = kw.value
        labels: set[str] = set()
        if isinstance(label_node, ast.List | ast.Tuple):
            labels = {e.value for e in label_node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if kind == "Counter":
            base = name.removesuffix("_total")
            out[base + "_total"] = labels
            out[base + "_created"] = labels
        elif kind == "Gauge":
            out[name] = labels
        elif kind == "Histogram":
            out[name + "_bucket"] = labels | {"le"}
            for suffix in ("_sum", "_count", "_created"):
                out[name + suffix] = labels
        else:
            out[name] = labels | {"quantile"}
            for suffix in ("_sum", "_count", "_created"):
                out[name + suffix] = labels
    return out


def recording_rules() -> dict[str, set[str]]:
    """Recording rule name -> labels it keeps (job and instance: every rule aggregates by them)."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"]: set(TARGET_LABELS) for g in doc["groups"] for r in g["rules"] if "record" in r}


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are neither functions nor keywords)."""
    s = _strip_strings(expr)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def promql_selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its matchers) for every ``metric{...}`` selector."""
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", _strip_strings(m.group(2))))
        out.append((m.group(1), labels))
    return out


def promql_grouping_labels(expr: str) -> set[str]:
    out: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        out |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open in {timeout_s} s")


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL: only the process this test started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class LocalPrometheus:
    """A real Prometheus on a free 127.0.0.1 port with its TSDB in ``workdir``.

    ``targets``: host:port list scraped as job ``netsiam-detector`` every ``scrape_interval``, and
    ``learn_targets`` as job ``netsiam-learn``;
    ``rule_files``: copied next to the generated config. Use as a context manager: the server
    is always stopped on exit, and its log is kept in ``workdir/prometheus.log``.
    """

    def __init__(self, workdir: Path, targets: Sequence[str] = (), rule_files: Sequence[Path] = (),
                 scrape_interval: str = "1s", job: str = DETECTOR_JOB,
                 ready_timeout_s: float = 30.0, learn_targets: Sequence[str] = ()) -> None:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus is not installed")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        workdir.mkdir(parents=True, exist_ok=True)
        rules = []
        for rf in rule_files:
            shutil.copy(rf, workdir / rf.name)
            rules.append(rf.name)
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                       "scrape_timeout": scrape_interval},
            "rule_files": rules,
            "scrape_configs": [{"job_name": name, "static_configs": [{"targets": list(t)}]}
                               for name, t in ((job, targets), (LEARN_JOB, learn_targets)) if t],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalPrometheus:
        assert PROMETHEUS is not None
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError):
                if http_get(self.url + "/-/ready", 1.0)[0] == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"prometheus not ready in {self.ready_timeout_s} s: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        _status, body = http_get(url, 10.0)
        result: dict[str, Any] = json.loads(body)
        return result

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("/api/v1/query", query=expr)

    def value(self, expr: str) -> float:
        """The single value of an instant query (NaN when empty)."""
        res = self.query(expr)
        assert res["status"] == "success", res
        data = res["data"]["result"]
        return float(data[0]["value"][1]) if data else math.nan

    def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; prometheus log: {self.log()}")


def all_panel_exprs() -> list[tuple[str, str]]:
    """Every query of the dashboard: panels and annotations."""
    return [(p.title, t.expr) for p in PANELS for t in p.targets] + [(a.name, a.expr) for a in ANNOTATIONS]


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------------------------


def test_unit_has_the_required_settings() -> None:
    d = unit_directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    exec_start = one["ExecStart"].split()
    assert exec_start[0].startswith("/") and exec_start[1:] == ["detect", "--config", "/etc/netsiam/config.yaml"]
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    for key, want in {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
        "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "StateDirectory": "netsiam", "StandardOutput": "journal",
    }.items():
        assert one.get(key) == want, f"{key}={one.get(key)!r}, want {want!r}"
    assert "@system-service" in d["SystemCallFilter"]
    assert "ReadWritePaths" not in d, "state belongs in StateDirectory=, nothing else is writable"
    assert any("/opt/netsiam-models" in v for v in d["ReadOnlyPaths"]), "the model directory is read-only"
    mem = one["MemoryMax"]
    assert re.fullmatch(r"\d+[KMG]", mem), mem
    assert 512 * 2**20 <= int(mem[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[mem[-1]] <= 16 * 2**30


def test_env_example_is_key_value() -> None:
    for i, line in enumerate((DEPLOY / "systemd" / "netsiam.env").read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line), f"netsiam.env:{i}: {line!r}"


def _unit_copy(tmp_path: Path) -> Path:
    """The unit (and its drop-in) with ExecStart pointing at a stub: verify checks the binary exists."""
    stub = tmp_path / "netsiam"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit_dir = tmp_path / "units"
    (unit_dir / "netsiam-detect.service.d").mkdir(parents=True)
    unit = unit_dir / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/netsiam", str(stub)))
    (unit_dir / "netsiam-detect.service.d" / DROPIN.name).write_text(
        DROPIN.read_text().replace("/usr/local/bin/netsiam", str(stub)))
    return unit


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = _unit_copy(tmp_path)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit.parent}:", SYSTEMD_LOG_LEVEL="notice")
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, env=env,
                       timeout=60)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "netsiam" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


@needs_systemd_analyze
def test_unit_security_exposure_is_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = _unit_copy(tmp_path)
    probe = subprocess.run([SYSTEMD_ANALYZE, "security", "--help"], capture_output=True, text=True, timeout=30)
    if "--offline" not in probe.stdout:
        pytest.skip("systemd-analyze too old for `security --offline` (needs systemd >= 250)")
    # --threshold is the exposure x 10: 20 = "OK" band (<= 2.0 of 10)
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit.parent}:"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


# ---------------------------------------------------------------------------------------------
# Prometheus config and rules
# ---------------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_config() -> None:
    assert PROMTOOL is not None
    r = subprocess.run([PROMTOOL, "check", "config", str(PROM_DIR / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    assert PROMTOOL is not None
    r = subprocess.run([PROMTOOL, "test", "rules", "netsiam.rules.test.yml"], cwd=PROM_DIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr


def test_scrape_config_targets_the_detector() -> None:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {sc["job_name"]: sc for sc in cfg["scrape_configs"]}
    det = jobs[DETECTOR_JOB]
    assert det.get("metrics_path", "/metrics") == "/metrics"
    assert ["127.0.0.1:9108"] in [sc["targets"] for sc in det["static_configs"]]
    assert "netsiam.rules.yml" in cfg["rule_files"]


def test_scrape_config_targets_learn_where_its_unit_serves_metrics() -> None:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {sc["job_name"]: sc for sc in cfg["scrape_configs"]}
    unit = (DEPLOY / "systemd" / "netsiam-learn.service").read_text()
    m = re.search(r"^ExecStart=\S+ learn .*--metrics-port (\d+)", unit, re.M)
    assert m, "netsiam-learn.service serves no /metrics"
    assert [f"127.0.0.1:{m.group(1)}"] in [sc["targets"] for sc in jobs["netsiam-learn"]["static_configs"]]


def test_every_required_alert_is_defined_and_unit_tested() -> None:
    doc = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule.get("for"), f"{name}: no `for:`"
        assert rule.get("labels", {}).get("severity"), f"{name}: no severity label"
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), f"{name}: summary and description"
    tests = yaml.safe_load((PROM_DIR / "netsiam.rules.test.yml").read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert set(alerts) <= fires, f"no firing case for {set(alerts) - fires}"
    assert set(alerts) <= silent, f"no silent case for {set(alerts) - silent}"


def test_rule_exprs_use_only_exported_metrics() -> None:
    known = metric_catalogue() | recording_rules() | {m: TARGET_LABELS for m in SYNTHETIC_METRICS}
    for name, expr in rule_exprs():
        unknown = promql_metric_names(expr) - set(known)
        assert not unknown, f"{name}: unknown metric(s) {unknown} in {expr!r}"


# ---------------------------------------------------------------------------------------------
# Grafana dashboard
# ---------------------------------------------------------------------------------------------


def test_grafana_json_is_generated_from_the_panel_list() -> None:
    assert DASHBOARD_JSON.read_text() == grafana_json(), (
        "deploy/grafana/dashboards/netsiam.json is stale: run "
        "`python -m netsiam.dashboard grafana -o deploy/grafana/dashboards/netsiam.json`")


def test_panels_have_unique_keys_and_titles() -> None:
    keys, titles = [p.key for p in PANELS], [p.title for p in PANELS]
    assert len(set(keys)) == len(keys) and len(set(titles)) == len(titles)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in keys), keys


def test_grafana_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD_JSON.read_text())
    assert dash["uid"] == DASHBOARD_UID and 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["source"]["type"] == "query"
    # every tracked source, faulted or not: a bounded series the daemon always exports
    assert variables["source"]["definition"] == "label_values(netsiam_source_last_record_timestamp_seconds, source)"
    assert "netsiam_source_last_record_timestamp_seconds" in metric_catalogue()
    notes = [a for a in dash["annotations"]["list"] if not a.get("builtIn")]
    assert [a["expr"] for a in notes] == [a.expr for a in ANNOTATIONS]
    assert all("netsiam_fault_evidence_info" in a["expr"] and "$source" in a["expr"] and a["enable"] for a in notes)
    assert {"source", "fault"} <= set(notes[0]["tagKeys"].split(","))
    # a fault's region (raised -> cleared) says why: its raised event's evidence, kept by the grouping
    assert notes[0]["textFormat"] == "{{evidence}} (event {{event_id}})" and "evidence" in promql_grouping_labels(notes[0]["expr"])
    assert notes[0]["titleFormat"] == "{{fault}} on {{source}}" and notes[0]["useValueForTime"] is False
    assert variables["source"]["includeAll"] and variables["source"]["allValue"] == ".*"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) == len(PANELS)
    occupied: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"] and t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    assert any("$source" in t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("netsiam_fault_active", "netsiam_classifications_total", "netsiam_records_consumed_total",
                   "netsiam_records_valid_total", "netsiam_embed_batch_seconds_bucket",
                   "netsiam_record_to_event_seconds_bucket", "netsiam_consumer_lag",
                   "netsiam_records_invalid_total", "netsiam_model_info", "netsiam_model_reload_failures_total",
                   "netsiam_broker_up", "netsiam_feedback_applied_total", "netsiam_feedback_dead_letters_total"):
        assert metric in exprs, f"no panel shows {metric}"
    # learn is one service beside the detectors: its panels select its job, never the detector's $instance
    for p in dash["panels"]:
        learn = any("netsiam_feedback_" in t["expr"] or LEARN_JOB in t["expr"] for t in p["targets"])
        assert not learn or all(f'job="{LEARN_JOB}"' in t["expr"] and "$instance" not in t["expr"]
                                for t in p["targets"]), p["title"]
    kinds = {p["title"]: p["type"] for p in dash["panels"]}
    assert kinds["Fault timeline"] == "state-timeline" and kinds["Active faults"] == "stat"


def test_grafana_provisioning_files() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    assert ds["datasources"][0]["url"].startswith("http://")
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "netsiam.yml").read_text())
    assert prov["apiVersion"] == 1 and prov["providers"][0]["type"] == "file"
    assert prov["providers"][0]["options"]["path"]


def test_panel_exprs_use_only_exported_metrics_and_labels() -> None:
    catalogue = metric_catalogue()
    known = catalogue | recording_rules() | {m: TARGET_LABELS for m in SYNTHETIC_METRICS}
    assert "netsiam_fault_active" in catalogue and "netsiam_embed_batch_seconds_bucket" in catalogue
    for title, expr in all_panel_exprs():
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert not names - set(known), f"{title}: unknown metric(s) {names - set(known)} in {expr!r}"
        for metric, labels in promql_selector_labels(expr):
            allowed = known[metric] | TARGET_LABELS
            assert labels <= allowed, f"{title}: {metric} has no label(s) {labels - allowed}"
        allowed_groups = set().union(*(known[n] for n in names)) | TARGET_LABELS
        assert promql_grouping_labels(expr) <= allowed_groups, f"{title}: grouping by an unknown label"
    for _name, query, _label in VARIABLES:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m and m.group(1) in known and m.group(2) in known[m.group(1)] | TARGET_LABELS, query


@pytest.mark.parametrize("which", ["detector", "learn"])
def test_catalogue_matches_the_live_registry(which: str) -> None:
    """The parse of each metrics module agrees with what its class really registers."""
    from prometheus_client import CollectorRegistry

    from netsiam.detector.metrics import DetectorMetrics
    from netsiam.trainer.learnmetrics import LearnMetrics

    reg = CollectorRegistry()
    if which == "detector":
        DetectorMetrics(reg).track_sources(lambda: [("sbc-1", 1795384000.0)])
    else:
        LearnMetrics(reg)
    catalogue = metric_catalogue([METRICS_PY if which == "detector" else LEARN_METRICS_PY])
    families = list(reg.collect())
    suffix = {"counter": "_total", "histogram": "_bucket", "gauge": "", "summary": "_sum"}
    for fam in families:
        assert fam.name + suffix[fam.type] in catalogue, fam.name
        assert {lbl for smp in fam.samples for lbl in smp.labels} <= catalogue[fam.name + suffix[fam.type]]
    main_names = {n for n in catalogue if not n.endswith(("_created", "_sum", "_count"))}
    assert len(families) == len(main_names)


def test_metric_name_parser() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$y"}[5m]))) / on (job) b + c'
    ) == {"a_bucket", "b", "c"}
    assert promql_metric_names('count(x{s="sum(y)"}) or vector(0)') == {"x"}
    assert promql_selector_labels('foo{a="1", b=~"x,c=2"}') == [("foo", {"a", "b"})]


def test_expand_variables() -> None:
    e = 'rate(x{source=~"$source", instance=~"$instance"}[$__rate_interval]) + increase(y[$__range])'
    out = expand(e, source="sbc-1", rate_interval_s=4, range_s=600)
    assert out == 'rate(x{source=~"sbc\\\\-1", instance=~".*"}[4s]) + increase(y[600s])'
    assert 'source=~"(a|b\\\\.c)"' in expand(e, source=["a", "b.c"])
    with pytest.raises(ValueError):
        expand("x[$__interval]")


def test_cli_writes_the_grafana_json(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    assert dashboard_main(["grafana", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["uid"] == DASHBOARD_UID


def test_render_dashboard_unreachable_prometheus(tmp_path: Path) -> None:
    with pytest.raises(NetsiamError, match="cannot reach Prometheus"):
        render_dashboard(f"http://127.0.0.1:{free_port()}", tmp_path / "x.png", range_s=60, scrape_interval_s=1)
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------
# against a real Prometheus
# ---------------------------------------------------------------------------------------------


@needs_prometheus
def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """Every panel, variable and rule expression parses and evaluates on a real (empty) server."""
    with LocalPrometheus(tmp_path / "prom", rule_files=[RULES]) as prom:
        for title, expr in all_panel_exprs():
            for src in (None, "sbc-1", ["sbc-1", "edge.gw-2"]):
                q = expand(expr, source=src, rate_interval_s=60, range_s=3600)
                res = prom.query(q)
                assert res["status"] == "success", f"{title}: {q}: {res.get('error')}"
        for name, expr in rule_exprs():
            res = prom.query(expr)
            assert res["status"] == "success", f"{name}: {res.get('error')}"
        for _name, query, _label in VARIABLES:
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query).groups()  # type: ignore[union-attr]
            res = prom.api(f"/api/v1/label/{label}/values", **{"match[]": metric})
            assert res["status"] == "success", res
        rules = prom.api("/api/v1/rules")
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert loaded >= REQUIRED_ALERTS


class SyntheticDetector:
    """prometheus_client HTTP servers exporting DetectorMetrics and LearnMetrics (``port``, ``learn_port``),
    with traffic and feedback ticking in a thread."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        from netsiam.detector.metrics import DetectorMetrics
        from netsiam.trainer.learnmetrics import LearnMetrics

        self.registry = CollectorRegistry()
        self.m = DetectorMetrics(self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.learn = LearnMetrics(CollectorRegistry())
        self.learn_port = free_port()
        self.learn_server, _ = start_http_server(self.learn_port, addr="127.0.0.1", registry=self.learn.registry)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        m = self.m
        m.model_info.labels(version="2026.11.22-abc123").set(1)
        m.model_loaded.set(time.time() - 300)
        m.broker_up.set(1)
        m.sources_tracked.set(3)
        m.track_sources(lambda: [(f"sbc-{i}", time.time() - i) for i in (1, 2, 3)])
        m.raised.set("sbc-1", "blocked", "success_rel 0.02 (normal 0.19 to 1.93)",
                     "0f5e4a2c-3d1b-5c6e-9f7a-8b9c0d1e2f3a")
        m.raised.set("sbc-2", "capacity_limit")
        m.fault_events.labels(fault="blocked", state="raised").inc()
        m.model_reloads.inc()
        m.last_commit.set(time.time())
        self._ticker.start()

    def _tick(self) -> None:
        m = self.m
        i = 0
        while not self._stop.wait(0.1):
            i += 1
            m.records_consumed.inc(100)
            m.records_valid.inc(97)
            m.records_invalid.labels(reason="schema").inc(2)
            m.records_invalid.labels(reason="not_json").inc(1)
            m.windows_embedded.inc(20)
            m.classifications.labels(**{"class": "normal"}).inc(17)
            m.classifications.labels(**{"class": "blocked"}).inc(2)
            m.classifications.labels(**{"class": "unknown"}).inc(1)
            m.embed_batch_seconds.observe(0.004 + 0.002 * (i % 5))
            m.embed_batch_size.observe(20)
            m.record_to_event_seconds.observe(0.03 + 0.01 * (i % 3))
            m.consumer_lag.labels(topic="netsiam.samples", partition="0").set(10 + i % 7)
            m.consumer_lag.labels(topic="netsiam.samples", partition="1").set(3)
            m.events_pending.set(i % 2)
            m.last_commit.set(time.time())
            m.commits.inc()
            if i % 10 == 0:
                m.fault_events.labels(fault="capacity_limit", state="raised").inc()
                m.sources_evicted.inc()
                self.learn.consumed.inc(2)
                self.learn.applied.labels(action="false_alarm").inc()
                self.learn.dead_letters.labels(reason="refused").inc()
                self.learn.last_applied.set_to_current_time()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=5)
        for server in (self.server, self.learn_server):
            server.shutdown()
            server.server_close()


@needs_prometheus
def test_render_dashboard_against_real_prometheus(tmp_path: Path) -> None:
    det = SyntheticDetector()
    try:
        with LocalPrometheus(tmp_path / "prom", targets=[f"127.0.0.1:{det.port}"], rule_files=[RULES],
                             learn_targets=[f"127.0.0.1:{det.learn_port}"]) as prom:
            prom.wait_for(lambda: prom.value("count_over_time(netsiam_records_consumed_total[1m])") >= 6,
                          "six scrapes of the synthetic detector")
            data = fetch_panels(prom.url, range_s=60, step_s=1, scrape_interval_s=1)
            empty = [pd.panel.title for pd in data if not pd.has_data or pd.errors]
            assert not empty, f"panels without data: {empty}"
            by_key = {pd.panel.key: pd for pd in data}
            timeline = {s.name(t.legend) for t, s in by_key["fault_timeline"].series}
            assert timeline == {"sbc-1 blocked", "sbc-2 capacity_limit"}
            version = [s.name(t.legend) for t, s in by_key["model_version"].series]
            assert version == ["2026.11.22-abc123"]
            learned = {s.name(t.legend): s.values for t, s in by_key["feedback_applied"].series}
            assert set(learned) == set(ACTIONS) and max(learned["false_alarm"]) > 0
            assert max(learned["support"]) == 0
            # $source lists every tracked source, sbc-3 (no fault) too
            (_, query, _), = [v for v in VARIABLES if v[0] == "source"]
            metric = re.fullmatch(r"label_values\((\w+), source\)", query).group(1)  # type: ignore[union-attr]
            assert prom.api("/api/v1/label/source/values", **{"match[]": metric})["data"] == ["sbc-1", "sbc-2", "sbc-3"]
            only = fetch_panels(prom.url, source="sbc-1", range_s=60, step_s=1, scrape_interval_s=1,
                                panels=[PANELS[0]])
            assert only[0].series and only[0].series[0][1].values[-1] == 1.0  # one active fault on sbc-1

            out = render_dashboard(prom.url, tmp_path / "out" / "dashboard.png", range_s=60)
            assert out.stat().st_size > 20_000
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            out2 = render_dashboard(prom.url, tmp_path / "sbc1.png", source="sbc-1", range_s=60,
                                    scrape_interval_s=1)
            assert out2.stat().st_size > 20_000
            assert prometheus_scrape_interval(prom.url) == 1.0
            # the entry point `netsiam plot dashboard` delegates to (args as cli.py parses them)
            ns = argparse.Namespace(prometheus=prom.url, output=str(tmp_path / "cli.png"))
            assert cli_plot_dashboard(ns, None) == 0
            assert (tmp_path / "cli.png").stat().st_size > 20_000

            # the rules load and evaluate against live data without errors; the fault alert is pending
            prom.wait_for(lambda: prom.value('count(ALERTS{alertname="NetsiamFaultActive"})') == 2,
                          "NetsiamFaultActive pending for both sources", timeout_s=10)
            groups = prom.api("/api/v1/rules")["data"]["groups"]
            bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] == "err"]
            assert not bad, bad
    finally:
        det.close()


# ---------------------------------------------------------------------------------------------
# live: broker + detector daemon + replay, scraped by a real Prometheus
# ---------------------------------------------------------------------------------------------

LIVE_MODULES = ("netsiam.detector.cli", "netsiam.broker.embedded", "netsiam.replay",
                "netsiam.trainer.simulate_cli")


def _live_model() -> Path | None:
    env = os.environ.get("NETSIAM_LIVE_MODEL")
    if env:
        return Path(env)
    default = ROOT / "netsiam" / "default_model"
    return default if (default / "manifest.json").exists() else None


def _netsiam(*args: str) -> list[str]:
    return [sys.executable, "-m", "netsiam", *args]


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_prometheus
def test_live_daemon_every_panel_has_data(tmp_path: Path) -> None:
    missing = [m for m in LIVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"daemon verbs not implemented yet: {', '.join(missing)} missing")
    model = _live_model()
    if model is None:
        pytest.skip("no model: netsiam/default_model/manifest.json missing and NETSIAM_LIVE_MODEL unset")
    trace, labels = tmp_path / "trace.jsonl", tmp_path / "labels.csv"
    subprocess.run(_netsiam("simulate", "--sources", "3", "--minutes", "6", "--seed", "3", "-o", str(trace),
                            "--labels", str(labels), "--quiet"), check=True, timeout=120)
    n_records = sum(1 for line in trace.read_text().splitlines() if line.strip())
    broker_port, metrics_port, learn_port = free_port(), free_port(), free_port()
    served = tmp_path / "served"   # learn changes only a copy, never the shipped model
    shutil.copytree(model, served)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": f"127.0.0.1:{broker_port}", "group_id": f"live-{broker_port}"},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "detector": {"model": str(served)},
    }))
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as log:
            p = subprocess.Popen(_netsiam(*args), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs.append(p)
        return p

    def tail(name: str) -> str:
        return (logs / f"{name}.log").read_text(errors="replace")[-3000:]

    t0 = time.time()
    try:
        broker = spawn("broker", "broker", "--config", str(cfg), "--port", str(broker_port))
        wait_port(broker_port, 60, broker)
        time.sleep(1.0)  # the broker accepts before its topics exist
        with LocalPrometheus(tmp_path / "prom", targets=[f"127.0.0.1:{metrics_port}"], rule_files=[RULES],
                             learn_targets=[f"127.0.0.1:{learn_port}"]) as prom:
            detect = spawn("detect", "detect", "--config", str(cfg), "--metrics-port", str(metrics_port))
            learn = spawn("learn", "learn", "--config", str(cfg), "--metrics-port", str(learn_port))
            deadline = time.monotonic() + 90
            for name, proc, url in (("detect", detect, f"http://127.0.0.1:{metrics_port}/healthz"),
                                    ("learn", learn, f"http://127.0.0.1:{learn_port}/metrics")):
                while True:
                    assert proc.poll() is None, f"{name} exited: {tail(name)}"
                    with contextlib.suppress(OSError):
                        if http_get(url, 1.0)[0] == 200:
                            break
                    assert time.monotonic() < deadline, f"{url} never answered 200: {tail(name)}"
                    time.sleep(0.5)
            # feedback that is not JSON: learn dead-letters it, the feedback panel shows it
            from kafka import KafkaProducer
            producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{broker_port}")
            try:
                producer.send("netsiam.feedback", b"not json").get(30)
            finally:
                producer.close()
            # 6 simulated minutes at 20x: 18 s, so each fault (>= 30 s) is active for >= 1.5 s of scrapes
            replay = subprocess.run(_netsiam("replay", str(trace), "--config", str(cfg), "--bootstrap",
                                             f"127.0.0.1:{broker_port}", "--speed", "20", "--quiet"),
                                    capture_output=True, text=True, timeout=120)
            assert replay.returncode == 0, replay.stderr[-3000:]
            prom.wait_for(lambda: prom.value("sum(netsiam_records_consumed_total)") >= n_records,
                          f"{n_records} records consumed", timeout_s=60)
            prom.wait_for(lambda: prom.value('sum(netsiam_feedback_dead_letters_total{reason="not_json"})') == 1,
                          "learn's dead letter scraped", timeout_s=30)
            time.sleep(3)  # a few more scrapes after the last record
            data = fetch_panels(prom.url, range_s=time.time() - t0, step_s=1, scrape_interval_s=1)
            empty = [pd.panel.title for pd in data if not pd.has_data or pd.errors]
            assert not empty, f"panels without data: {empty}\n{tail('detect')}"
            png = render_dashboard(prom.url, tmp_path / "live.png", range_s=time.time() - t0,
                                   scrape_interval_s=1)
            assert png.stat().st_size > 20_000
            if os.environ.get("NETSIAM_DASHBOARD_PNG"):  # how README's picture is made
                shutil.copyfile(png, os.environ["NETSIAM_DASHBOARD_PNG"])
            assert detect.poll() is None, tail("detect")
            assert learn.poll() is None, tail("learn")
    finally:
        for p in reversed(procs):
            stop_process(p)
