"""``netsiam collect sipp`` on files written the way a running SIPp writes them: line by line, cut
mid-line, truncated or recreated by a SIPp restart, with sentinels, bad lines and partial periods.
Records must be byte for byte what ``netsiam import sipp`` makes of the same rows; a restarted
collector resumes after the last published row (state file), nothing duplicated or skipped.
The broker side (acks, outage, a real SIPp) is in test_collect_publish.py."""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import REPO, imported, stat_text
from prometheus_client import CollectorRegistry

from netsiam.collect.metrics import CollectMetrics
from netsiam.collect.sink import StreamSink
from netsiam.collect.sipp import SippCollector
from netsiam.collect.state import CollectState
from netsiam.collect.statfollow import StatFollower
from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.importers.sipp import import_sipp, parse_stat_file
from netsiam.traceio import Record

DATA = REPO / "tests" / "data"


def metrics() -> CollectMetrics:
    return CollectMetrics(CollectorRegistry(), "sipp")


def value(m: CollectMetrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, {"collector": "sipp", **labels})
    return 0.0 if v is None else v


def collect(paths: list[Path], out: Path, state: Path | None = None, source: str = "s",
            m: CollectMetrics | None = None) -> int:
    m = m or metrics()
    sink = StreamSink(str(out), m)
    try:
        return SippCollector(paths, source, sink, CollectState.load(state, source), m).run()
    finally:
        sink.close()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


# -- following a file as SIPp writes it -------------------------------------------------------------


@pytest.mark.parametrize("name", ["sipp_a", "sipp_b", "sipp_c", "sipp_small"])
def test_rows_written_in_pieces_equal_the_import(tmp_path: Path, name: str) -> None:
    data = (DATA / f"{name}_stat.csv").read_bytes()
    path = tmp_path / "stat.csv"
    path.write_bytes(b"")
    f = StatFollower(path, metrics())
    rng = random.Random(name)
    got, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 7, 100, 443, 445, 2000])  # cuts lines anywhere, often mid-row
        with path.open("ab") as w:
            w.write(data[pos:pos + step])
        pos += step
        got.extend(f.poll())
    _, want = parse_stat_file(DATA / f"{name}_stat.csv")
    assert got == want
    assert f.resets == 0


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    text = stat_text("sipp_small")
    lines = text.splitlines(keepends=True)
    path = tmp_path / "stat.csv"
    path.write_text("".join(lines[:5]) + lines[5][:200])
    f = StatFollower(path, metrics())
    first = f.poll()
    assert [r.ts for r in first] == [r.ts for r in parse_stat_file(path)[1][:3]]  # rows 2..4 whole, 5 cut
    with path.open("a") as w:
        w.write(lines[5][200:])
    assert len(f.poll()) == 1


def test_sipp_restart_truncates_the_file(tmp_path: Path) -> None:
    """SIPp with -stf truncates the same file (same inode) and writes a new run from its header."""
    run1, run2 = stat_text("sipp_small"), stat_text("sipp_small", shift_s=3600)
    path = tmp_path / "stat.csv"
    path.write_text(run1)
    m = metrics()
    f = StatFollower(path, m)
    rows = f.poll()
    ino = path.stat().st_ino
    with path.open("r+") as w:   # in place, as long as the old run: no size drop to notice, other bytes
        w.truncate(0)
        w.write(run2)
    assert path.stat().st_ino == ino
    rows += f.poll()
    assert f.resets == 1 and value(m, "netsiam_collect_file_resets_total") == 1
    (tmp_path / "r1.csv").write_text(run1)
    (tmp_path / "r2.csv").write_text(run2)
    want = import_sipp([tmp_path / "r1.csv", tmp_path / "r2.csv"], "s")
    assert [Record("s", r.ts, r.metrics) for r in rows] == want


def test_restart_into_a_new_file_and_a_new_run_appended(tmp_path: Path) -> None:
    """A new file replaces the old one (new inode), and a run appended after a header line."""
    run1, run2, run3 = (stat_text("sipp_small", shift_s=k * 3600) for k in range(3))
    path = tmp_path / "stat.csv"
    path.write_text(run1[:5000])
    m = metrics()
    f = StatFollower(path, m)
    rows = f.poll()
    with path.open("a") as w:                   # the old file gets its last rows, then is replaced
        w.write(run1[5000:])
    (tmp_path / "new.csv").write_text(run2)
    os.replace(tmp_path / "new.csv", path)
    rows += f.poll()
    with path.open("a") as w:
        w.write(run3)                           # a header line in the middle: a new run
    rows += f.poll()
    assert f.resets == 2
    for k, text in enumerate((run1, run2, run3)):
        (tmp_path / f"r{k}.csv").write_text(text)
    want = import_sipp([tmp_path / f"r{k}.csv" for k in range(3)], "s")
    assert [Record("s", r.ts, r.metrics) for r in rows] == want


def test_sentinels_bad_lines_and_partial_periods(tmp_path: Path) -> None:
    lines = stat_text("sipp_small").splitlines(keepends=True)
    cols = lines[0].split(";")
    row = lines[10].split(";")
    row[cols.index("CallLengthStDev(P)")] = "9223372036854775807"
    bad = lines[12].split(";")
    bad[cols.index("FailedCall(P)")] = "lots"
    # an exit fragment: SIPp's last period, 0.2 s long
    exit_row = lines[-1].split(";")
    start = float(exit_row[cols.index("CurrentTime")].split()[-1])
    for name, t in (("LastResetTime", start), ("CurrentTime", start + 0.2)):
        d, tm, _ = exit_row[cols.index(name)].split("\t")
        exit_row[cols.index(name)] = f"{d}\t{tm}\t{t:.6f}"
    path = tmp_path / "stat.csv"
    path.write_text("".join(lines[:10]) + ";".join(row) + lines[11] + ";".join(bad) + "garbage\n"
                    + "".join(lines[13:]) + ";".join(exit_row))
    m = metrics()
    rows = StatFollower(path, m).poll()
    assert value(m, "netsiam_collect_errors_total", reason="bad_row") == 2     # the 'lots' row and 'garbage'
    assert value(m, "netsiam_collect_rows_skipped_total", reason="partial_period") == 2  # start + exit
    sentinel_ts = float(lines[10].split(";")[cols.index("CurrentTime")].split()[-1])
    (hit,) = [r for r in rows if r.ts == sentinel_ts]
    assert "CallLengthStDev" not in hit.metrics and all(m in hit.metrics for m in RAW_METRICS)
    want = [r for r in parse_stat_file(DATA / "sipp_small_stat.csv")[1] if r.ts != float(
        lines[12].split(";")[cols.index("CurrentTime")].split()[-1])]
    assert [r.ts for r in rows] == [r.ts for r in want]


def test_not_statistics_is_counted_and_waited_out(tmp_path: Path) -> None:
    path = tmp_path / "stat.csv"
    path.write_text("hello\nworld\n")
    m = metrics()
    f = StatFollower(path, m)
    assert f.poll() == [] and value(m, "netsiam_collect_errors_total", reason="not_statistics") == 2
    path.write_text(stat_text("sipp_small"))   # rewritten: SIPp starts writing there
    assert len(f.poll()) == len(parse_stat_file(DATA / "sipp_small_stat.csv")[1])


# -- the collector: several files, the state file ---------------------------------------------------


def test_collect_equals_import_and_parts_merge(tmp_path: Path) -> None:
    lines = stat_text("sipp_a").splitlines(keepends=True)
    (tmp_path / "p1.csv").write_text("".join(lines[:200]))
    (tmp_path / "p2.csv").write_text(lines[0] + "".join(lines[200:]))
    out = tmp_path / "out.jsonl"
    assert collect([tmp_path / "p2.csv", tmp_path / "p1.csv"], out) == 478
    assert lines_of(out) == imported([DATA / "sipp_a_stat.csv"])


def test_restart_resumes_after_the_last_published_row(tmp_path: Path) -> None:
    lines = stat_text("sipp_b").splitlines(keepends=True)
    path, out, state = tmp_path / "stat.csv", tmp_path / "out.jsonl", tmp_path / "state.json"
    path.write_text("".join(lines[:150]) + lines[150][:100])
    n1 = collect([path], out, state)
    assert orjson.loads(state.read_bytes())["last_ts"] == orjson.loads(lines_of(out)[-1])["ts"]
    n2 = collect([path], out, state)                  # nothing new: nothing again
    with path.open("a") as w:
        w.write(lines[150][100:] + "".join(lines[151:]))
    m = metrics()
    n3 = collect([path], out, state, m=m)
    assert n2 == 0 and n1 + n3 == len(lines_of(out))
    assert lines_of(out) == imported([DATA / "sipp_b_stat.csv"])   # no duplicate, no gap
    assert value(m, "netsiam_collect_rows_skipped_total", reason="published") == n1


def test_state_of_another_source_or_corrupt_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    CollectState(state, "a", 1.0).save()
    with pytest.raises(NetsiamError, match="state of source 'a'"):
        CollectState.load(state, "b")
    state.write_text("{nope")
    with pytest.raises(NetsiamError, match="unreadable collector state"):
        CollectState.load(state, "a")


# -- the verb ---------------------------------------------------------------------------------------


def netsiam(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "netsiam", *args], capture_output=True, timeout=120,
                          cwd=REPO, **kw)  # type: ignore[call-overload,no-any-return]


def test_verb_pipes_records_to_stdout() -> None:
    r = netsiam("collect", "sipp", str(DATA / "sipp_c_stat.csv"), "--source", "s", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == imported([DATA / "sipp_c_stat.csv"])


def test_verb_errors_are_one_line() -> None:
    r = netsiam("collect", "sipp", "/nonexistent/stat.csv", "--source", "s", "-o", "-")
    assert r.returncode == 3 and b"no such file" in r.stderr and b"Traceback" not in r.stderr
    r = netsiam("collect", "sipp", str(DATA / "sipp_c_stat.csv"), "--source", "s", "-o", "-", "--bootstrap", "h:1")
    assert r.returncode == 2 and b"--bootstrap" in r.stderr  # usage: publish or write, not both


def test_a_file_that_cannot_be_collected_is_refused_before_the_broker_is_tried(tmp_path: Path) -> None:
    """No broker listens on port 1: a missing file is said at once, not after the broker's timeout; read
    once, a file with no SIPp header (a trace, an empty file) is an error, not a run of 0 records."""
    t0 = time.monotonic()
    r = netsiam("collect", "sipp", str(tmp_path / "missing.csv"), "--source", "s", "--bootstrap", "127.0.0.1:1",
                "--state", "none")
    assert r.returncode == 3 and b"missing.csv: no such file" in r.stderr and time.monotonic() - t0 < 20, r.stderr
    trace, empty = tmp_path / "t.jsonl", tmp_path / "empty.csv"
    trace.write_text('{"source": "a", "ts": 1795384000, "metrics": {}}\n')
    empty.write_text("")
    for bad in (trace, empty):
        r = netsiam("collect", "sipp", str(bad), "--source", "s", "-o", str(tmp_path / "out.jsonl"))
        assert r.returncode == 3 and b"not SIPp statistics" in r.stderr and b"Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_follow_restart_no_duplicate_no_gap(tmp_path: Path, sig: int) -> None:
    """--follow as a process: rows appear, the collector is stopped (SIGTERM) or killed (SIGKILL) once
    it has saved its state, rows keep coming, a new one resumes: the output is the import, once."""
    lines = stat_text("sipp_small").splitlines(keepends=True)
    path, out, state = tmp_path / "stat.csv", tmp_path / "out.jsonl", tmp_path / "state.json"
    path.write_text("")
    cmd = [sys.executable, "-m", "netsiam", "collect", "sipp", str(path), "--source", "s", "--follow",
           "-o", str(out), "--state", str(state)]

    def run_until(n_lines: int, upto: int) -> None:
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)
        try:
            for k in range(n_lines, upto):
                with path.open("a") as w:
                    w.write(lines[k][:50])
                    w.flush()
                    w.write(lines[k][50:])
            want_ts = float(lines[upto - 1].split(";")[2].split()[-1])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:   # the last row written is published and saved
                if state.exists() and orjson.loads(state.read_bytes())["last_ts"] == want_ts:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"state never reached {want_ts}: {state.read_text() if state.exists() else ''}")
        finally:
            proc.send_signal(sig)
            proc.wait(30)

    run_until(0, 20)
    run_until(20, len(lines))
    assert lines_of(out) == imported([DATA / "sipp_small_stat.csv"])


def test_verb_stops_quietly_when_the_pipe_closes() -> None:
    p = subprocess.run(f"set -o pipefail; {shlex.quote(sys.executable)} -m netsiam collect sipp "
                       f"{DATA / 'sipp_a_stat.csv'} --source s --state none -o - | head -n 2", shell=True, cwd=REPO,
                       capture_output=True, timeout=120, executable="/bin/bash", text=True)
    assert p.stdout.splitlines() == [v.decode() for v in imported([DATA / "sipp_a_stat.csv"])[:2]]
    assert "Traceback" not in p.stderr and "Broken pipe" not in p.stderr and "error" not in p.stderr, p.stderr
    assert p.returncode == 0, p.stderr   # the reader had what it wanted: not a failure (pipefail: the verb's status)
