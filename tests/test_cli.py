"""Every verb given bad input exits non-zero with one line on stderr and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def netsiam(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsiam", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def assert_one_line_error(p: subprocess.CompletedProcess[str], needle: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "WARNING" not in ln and " I " not in ln]
    errors = [ln for ln in lines if ln.startswith("netsiam ")]
    assert len(errors) == 1, p.stderr
    assert needle in errors[0], errors[0]


@pytest.fixture()
def corrupt_trace(tmp_path: Path) -> Path:
    p = tmp_path / "corrupt.jsonl"
    p.write_text('{"source": "a", "ts": 1795384000, "metrics": {"OutgoingCall": 1}}\n{not json\n')
    return p


def test_simulate_bad_arguments(tmp_path: Path) -> None:
    assert_one_line_error(netsiam("simulate", "--sources", "0", "-o", str(tmp_path / "t"), "--labels",
                                  str(tmp_path / "l")), "--sources")
    assert_one_line_error(netsiam("simulate", "--faults", "meteor", "-o", str(tmp_path / "t"), "--labels",
                                  str(tmp_path / "l")), "unknown fault kind")


def test_import_sipp_missing_and_wrong_format(tmp_path: Path) -> None:
    assert_one_line_error(netsiam("import", "sipp", str(tmp_path / "nope.csv"), "--source", "x", "-o",
                                  str(tmp_path / "o.jsonl")), "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a;b;c\n1;2;3\n")
    assert_one_line_error(netsiam("import", "sipp", str(bad), "--source", "x", "-o",
                                  str(tmp_path / "o.jsonl")), "bad.csv")


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("window:\n  lenght: 3\n")
    assert_one_line_error(netsiam("simulate", "--config", str(cfg), "-o", str(tmp_path / "t"), "--labels",
                                  str(tmp_path / "l")), "unknown key window.lenght")
    assert_one_line_error(netsiam("simulate", "--config", str(tmp_path / "missing.yaml"), "-o",
                                  str(tmp_path / "t"), "--labels", str(tmp_path / "l")), "not found")


@pytest.mark.slow
def test_train_and_evaluate_on_corrupt_or_missing_input(tmp_path: Path, corrupt_trace: Path) -> None:
    labels = tmp_path / "l.csv"
    labels.write_text("source,start,end,label\n")
    assert_one_line_error(netsiam("train", "--data", str(corrupt_trace), "--labels", str(labels), "-o",
                                  str(tmp_path / "m")), "corrupt.jsonl:1")
    assert_one_line_error(netsiam("evaluate", "--model", str(tmp_path / "no-model"), "--data",
                                  str(corrupt_trace), "--labels", str(labels), "--json",
                                  str(tmp_path / "r.json")), "no-model")


def test_replay_missing_trace(tmp_path: Path) -> None:
    assert_one_line_error(netsiam("replay", str(tmp_path / "none.jsonl"), "--bootstrap", "127.0.0.1:1",
                                  "--max"), "none.jsonl")
