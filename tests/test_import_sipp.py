"""SIPp -trace_stat import, on real recordings made with deploy/testbed/record_sipp.py.

Fixtures (tests/data, see sipp_*_meta.json for the exact runs):
  sipp_a  15 calls/s, 8 min, blocked x2 + capacity_limit x2, source sbc-a
  sipp_b  50 calls/s, 8.5 min, capacity_limit x2 + blocked x2 (other order), source sbc-b
  sipp_c  30 calls/s, 4 min, degraded (not a trained class) + capacity_limit, source sbc-c
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import free_udp_base

from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.importers.sipp import import_sipp
from netsiam.traceio import LabelInterval, Record, read_labels

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
RECORDER = REPO / "deploy" / "testbed" / "record_sipp.py"
RECORDINGS = {"sipp_a": ("sbc-a", 15.0, 8.0), "sipp_b": ("sbc-b", 50.0, 8.5), "sipp_c": ("sbc-c", 30.0, 4.0)}
RECOVERY_S = 40.0  # after `blocked`, INVITE retransmissions and timeouts drain for up to ~32 s


Loaded = tuple[list[Record], list[LabelInterval]]


def _load(name: str) -> Loaded:
    source = RECORDINGS[name][0]
    return import_sipp([DATA / f"{name}_stat.csv"], source), read_labels(DATA / f"{name}_labels.csv")


@pytest.fixture(scope="module", params=sorted(RECORDINGS))
def recording(request: pytest.FixtureRequest) -> tuple[str, list[Record], list[LabelInterval]]:
    records, labels = _load(request.param)
    return request.param, records, labels


def _col(records: list[Record], name: str) -> np.ndarray:
    return np.array([r.metrics[name] for r in records])


def _inside(records: list[Record], iv: LabelInterval, skip_s: float = 2.0) -> list[Record]:
    """Records of an episode, minus the first seconds (calls in flight when it started)."""
    return [r for r in records if iv.start + skip_s < r.ts <= iv.end]


def _normal(records: list[Record], labels: list[LabelInterval]) -> list[Record]:
    """Records well clear of every episode and its recovery."""
    return [r for r in records if all(not (iv.start - 2 <= r.ts <= iv.end + RECOVERY_S) for iv in labels)]


# -- shape and validity ------------------------------------------------------------------------


def test_one_record_per_second(recording: tuple[str, list[Record], list[LabelInterval]]) -> None:
    name, records, _ = recording
    minutes = RECORDINGS[name][2]
    # SIPp's 1 s period drifts by a few ms, and the start/exit fragments are dropped.
    assert abs(len(records) - minutes * 60) <= 0.02 * minutes * 60
    span = records[-1].ts - records[0].ts
    assert abs(len(records) - (span + 1)) <= 0.01 * len(records) + 1


def test_records_valid_and_ordered(recording: tuple[str, list[Record], list[LabelInterval]]) -> None:
    name, records, _ = recording
    source = RECORDINGS[name][0]
    for r in records:
        assert r.source == source
        for m in RAW_METRICS:
            v = r.metrics[m]
            assert math.isfinite(v) and v >= 0, (r.ts, m, v)
        assert "(P)" not in "".join(r.metrics)  # suffix dropped
    dt = np.diff([r.ts for r in records])
    assert dt.min() > 0.9 and dt.max() < 1.2


def test_time_valued_columns_are_milliseconds(
    recording: tuple[str, list[Record], list[LabelInterval]],
) -> None:
    _, records, labels = recording
    normal = _normal(records, labels)
    assert np.allclose(_col(normal, "ElapsedTime"), 1000.0)  # "00:00:01" -> 1000 ms
    # Loopback answers in a few ms; CallLength ~ the 2 s hold of the testbed's calls.
    assert 0 < np.median(_col(normal, "ResponseTime1")) < 50
    assert 1900 < np.median(_col(normal, "CallLength")) < 2300


def test_labels_inside_the_trace(recording: tuple[str, list[Record], list[LabelInterval]]) -> None:
    name, records, labels = recording
    assert labels and {iv.source for iv in labels} == {RECORDINGS[name][0]}
    assert records[0].ts < min(iv.start for iv in labels)
    assert records[-1].ts > max(iv.end for iv in labels)


# -- what the faults look like -------------------------------------------------------------------


def test_normal_time_is_healthy(recording: tuple[str, list[Record], list[LabelInterval]]) -> None:
    name, records, labels = recording
    rate = RECORDINGS[name][1]
    normal = _normal(records, labels)
    assert len(normal) > 60
    assert abs(np.mean(_col(normal, "OutgoingCall")) - rate) < 0.05 * rate
    assert abs(np.mean(_col(normal, "SuccessfulCall")) - rate) < 0.05 * rate
    # At most a stray: a call whose UAS was killed between its 100 Trying and its final response
    # (the testbed restarts the UAS to switch faults) fails on SIPp's 60 s receive timeout.
    assert _col(normal, "FailedCall").sum() <= 2
    assert np.mean(_col(normal, "Retransmissions")) < 0.05 * rate


@pytest.mark.parametrize("name", ["sipp_a", "sipp_b"])
def test_blocked_stops_success_and_raises_retransmissions(name: str) -> None:
    records, labels = _load(name)
    rate = RECORDINGS[name][1]
    blocked = [iv for iv in labels if iv.label == "blocked"]
    assert len(blocked) == 2
    for iv in blocked:
        inside = _inside(records, iv)
        assert len(inside) >= iv.end - iv.start - 4
        assert _col(inside, "SuccessfulCall").max() <= 0.1 * rate
        assert np.mean(_col(inside, "Retransmissions")) > 2 * rate
        assert np.mean(_col(inside, "CurrentCall")) > 5 * rate  # unanswered calls pile up
        # Nothing answers: after SIP timer B (~32 s) the unanswered INVITEs fail.
        late = [r for r in inside if r.ts > iv.start + 34]
        assert late and np.mean(_col(late, "FailedCall")) > 0.5 * rate


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_capacity_limit_fails_part_of_a_surge(name: str) -> None:
    records, labels = _load(name)
    rate = RECORDINGS[name][1]
    episodes = [iv for iv in labels if iv.label == "capacity_limit"]
    assert episodes
    for iv in episodes:
        inside = _inside(records, iv)
        offered = np.mean(_col(inside, "OutgoingCall"))
        assert offered > 1.5 * rate  # the surge
        assert _col(inside, "FailedCall").min() > 0  # 503s every second
        assert 0.3 * offered < np.mean(_col(inside, "FailedCall")) < 0.8 * offered
        assert np.mean(_col(inside, "SuccessfulCall")) > 0.5 * rate  # part still gets through
        assert np.mean(_col(inside, "FailedRegexpShouldntMatch")) > 0  # how the UAC marks a 503


def test_degraded_is_slow_but_completes() -> None:
    records, labels = _load("sipp_c")
    (iv,) = [iv for iv in labels if iv.label == "degraded"]
    inside = _inside(records, iv)
    normal = _normal(records, labels)
    assert np.median(_col(inside, "ResponseTime1")) > 10 * np.median(_col(normal, "ResponseTime1"))
    assert _col(inside, "FailedCall").sum() == 0
    assert np.mean(_col(inside, "SuccessfulCall")) > 0.9 * RECORDINGS["sipp_c"][1]


def test_recordings_run_at_different_loads() -> None:
    a, la = _load("sipp_a")
    b, lb = _load("sipp_b")
    ratio = np.mean(_col(_normal(b, lb), "OutgoingCall")) / np.mean(_col(_normal(a, la), "OutgoingCall"))
    assert 3.0 < ratio < 3.7


# -- file handling ---------------------------------------------------------------------------


def _lines(name: str) -> list[str]:
    return (DATA / f"{name}_stat.csv").read_text().splitlines(keepends=True)


def test_consecutive_parts_merge_into_one_trace(tmp_path: Path) -> None:
    lines = _lines("sipp_a")
    header, rows = lines[0], lines[1:]
    (tmp_path / "part1.csv").write_text(header + "".join(rows[:200]))
    (tmp_path / "part2.csv").write_text(header + "".join(rows[200:]))
    merged = import_sipp([tmp_path / "part2.csv", tmp_path / "part1.csv"], "sbc-a")  # any order
    whole, _ = _load("sipp_a")
    assert [r.ts for r in merged] == [r.ts for r in whole]
    assert merged == whole


def test_overlapping_files_raise(tmp_path: Path) -> None:
    lines = _lines("sipp_a")
    (tmp_path / "p1.csv").write_text("".join(lines[:300]))
    (tmp_path / "p2.csv").write_text(lines[0] + "".join(lines[250:]))
    with pytest.raises(NetsiamError, match="overlap"):
        import_sipp([tmp_path / "p1.csv", tmp_path / "p2.csv"], "sbc-a")
    with pytest.raises(NetsiamError, match="overlap"):
        import_sipp([DATA / "sipp_a_stat.csv", DATA / "sipp_a_stat.csv"], "sbc-a")


def test_start_and_exit_fragments_are_dropped(tmp_path: Path) -> None:
    lines = _lines("sipp_a")
    first_row_epoch = float(lines[1].split(";")[2].split()[-1])  # SIPp's start row, ~ms long
    records, _ = _load("sipp_a")
    assert records[0].ts > first_row_epoch + 0.5
    # A last row cut short (SIPp killed mid-write) is skipped, not an error.
    (tmp_path / "cut.csv").write_text("".join(lines[:100]) + lines[100][:150])
    assert len(import_sipp([tmp_path / "cut.csv"], "x")) == 98


def test_duration_parsing(tmp_path: Path) -> None:
    lines = _lines("sipp_a")
    header = lines[0].rstrip("\n").split(";")
    rows = []
    for line in lines[1:6]:
        f = line.rstrip("\n").split(";")
        f[header.index("ResponseTime1(P)")] = "00:00:01:250500"
        f[header.index("CallLength(P)")] = "01:02:03:000000"
        rows.append(";".join(f) + "\n")
    (tmp_path / "d.csv").write_text(lines[0] + "".join(rows))
    rec = import_sipp([tmp_path / "d.csv"], "x")
    assert rec and all(r.metrics["ResponseTime1"] == pytest.approx(1250.5) for r in rec)
    assert all(r.metrics["CallLength"] == pytest.approx((3600 + 120 + 3) * 1000.0) for r in rec)


def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.csv", b"", "empty"),
        ("other.csv", b"source,start,end,label\nsbc-1,1,2,blocked\n", "not a SIPp"),
        ("binary.csv", bytes(range(256)) * 8, "binary"),
        ("latin.csv", b"StartTime;\xff\xfe;\n", "not a text"),
    ],
)
def test_not_sipp_statistics_raises(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = _bad(tmp_path, name, content)
    with pytest.raises(NetsiamError, match=match) as exc:
        import_sipp([path], "x")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_column_or_file_raises(tmp_path: Path) -> None:
    lines = _lines("sipp_a")
    no_retrans = lines[0].replace("Retransmissions(P);", "Retransmoozles(P);")
    path = _bad(tmp_path, "cols.csv", (no_retrans + "".join(lines[1:20])).encode())
    with pytest.raises(NetsiamError, match=r"missing columns: Retransmissions\(P\)"):
        import_sipp([path], "x")
    with pytest.raises(NetsiamError, match="no such file"):
        import_sipp([tmp_path / "nope.csv"], "x")
    with pytest.raises(NetsiamError, match="is a directory"):
        import_sipp([tmp_path], "x")


def test_bad_value_names_file_and_line(tmp_path: Path) -> None:
    lines = _lines("sipp_a")
    bad = lines[10].split(";")
    bad[lines[0].split(";").index("FailedCall(P)")] = "-3"
    path = _bad(tmp_path, "neg.csv", ("".join(lines[:10]) + ";".join(bad) + "".join(lines[11:30])).encode())
    with pytest.raises(NetsiamError, match=r"neg\.csv:11 FailedCall\(P\).*non-negative"):
        import_sipp([path], "x")
    bad[lines[0].split(";").index("FailedCall(P)")] = "lots"
    path.write_text("".join(lines[:10]) + ";".join(bad) + "".join(lines[11:30]))
    with pytest.raises(NetsiamError, match="not a number"):
        import_sipp([path], "x")


def test_sipp_sentinels_and_bad_values_in_unused_columns_are_left_out(tmp_path: Path) -> None:
    """SIPp writes INT64_MAX into statistics it cannot compute yet; a real recording must still import."""
    lines = _lines("sipp_a")
    cols = lines[0].split(";")
    row = lines[10].split(";")
    row[cols.index("CallLengthStDev(P)")] = "9223372036854775807"
    row[cols.index("ResponseTime1StDev(P)")] = "-1"
    path = _bad(tmp_path, "sentinel.csv", ("".join(lines[:10]) + ";".join(row) + "".join(lines[11:30])).encode())
    records = import_sipp([path], "x")
    assert len(records) >= 25
    hit = [r for r in records if "CallLengthStDev" not in r.metrics]
    assert len(hit) == 1 and "ResponseTime1StDev" not in hit[0].metrics
    assert all(m in hit[0].metrics for m in RAW_METRICS)


def test_gzip_compressed_statistics_import_the_same(tmp_path: Path) -> None:
    import gzip

    gz = tmp_path / "a_stat.csv.gz"
    gz.write_bytes(gzip.compress((DATA / "sipp_a_stat.csv").read_bytes()))
    assert import_sipp([gz], "sbc-a") == import_sipp([DATA / "sipp_a_stat.csv"], "sbc-a")
    (tmp_path / "junk.gz").write_bytes(b"not gzip")
    with pytest.raises(NetsiamError, match="not a gzip file"):
        import_sipp([tmp_path / "junk.gz"], "x")
    (tmp_path / "cut.gz").write_bytes(gz.read_bytes()[:300])   # a copy cut short: not "not a gzip file"
    with pytest.raises(NetsiamError, match="a truncated gzip file"):
        import_sipp([tmp_path / "cut.gz"], "x")


# -- the recorder itself ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian: sip-tester) is not installed")
def test_recorder_makes_a_labelled_trace(tmp_path: Path) -> None:
    """One short corpus recording through the fault relay: a frozen far end, a 503 surge, calls held
    until the UAC's timeout, and a path losing every call; each shows its signature in the counters."""
    port = free_udp_base(30)
    spec = tmp_path / "corpus.yaml"
    spec.write_text("""recordings:
  - {name: t, source: sbc-t, rate: 20, hold_s: 1, hold: fixed, timeout_s: 2, minutes: 0.6, seed: 3,
     events: [{at: 3, for: 6, fault: blocked, how: freeze},
              {at: 12, for: 5, fault: capacity_limit, how: surge, factor: 2.0, cap: 1.0, code: 503},
              {at: 20, for: 6, fault: capacity_limit, how: drop, cap: 0.0, code: 0},
              {at: 29, for: 5, fault: blocked, how: loss, share: 1.0}]}
""")
    cmd = [sys.executable, str(RECORDER), "--corpus", str(spec), "-o", str(tmp_path), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t_stat.csv.gz").is_file() and (tmp_path / "t_meta.json").is_file()
    labels = read_labels(tmp_path / "t_labels.csv")
    assert [iv.label for iv in labels] == ["blocked", "capacity_limit", "capacity_limit", "blocked"]
    assert {iv.source for iv in labels} == {"sbc-t"}
    assert 5.5 < labels[0].end - labels[0].start < 7.0
    records = import_sipp([tmp_path / "t_stat.csv.gz"], "sbc-t")
    assert 33 <= len(records) <= 37
    frozen = _inside(records, labels[0])
    assert frozen and _col(frozen, "SuccessfulCall").max() <= 2
    assert _col(frozen, "Retransmissions").sum() > 20
    surge = _inside(records, labels[1])
    assert surge and _col(surge, "FailedCall").sum() > 10 and np.mean(_col(surge, "OutgoingCall")) > 30
    held = _inside(records, labels[2], skip_s=3.0)                 # failures come with the 2-s timeout
    assert held and _col(held, "FailedCall").sum() > 20 and _col(held, "Retransmissions").sum() <= 5
    lost = _inside(records, labels[3])
    assert lost and _col(lost, "Retransmissions").sum() > 20 and _col(lost, "SuccessfulCall").max() <= 2
