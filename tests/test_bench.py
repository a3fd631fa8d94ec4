"""``make bench-quick`` as a smoke test: every benchmark runs on small sizes and reports every key.

No thresholds are asserted: the figures of a quick run on a shared machine mean nothing, only that
each benchmark's code path works end to end (broker, daemon subprocesses, training, GPU skip).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

# every key the issue asks for; each must be a finite number (the GPU ratio may be null without a GPU)
NUMERIC_KEYS = (
    "decode_ratio",
    "embed_ratio",
    "embed_plain_ratio",
    "embed_max_abs_diff",
    "e2e_ratio",
    "e2e_two_procs_ratio",
    "p50_latency_ms",
    "p99_latency_ms",
    "train_seconds",
    "rss_mib_per_1k_sources",
    "rss_kib_per_source_beyond_window",
    "rss_mib_at_10_sources",
    "bench_seconds",
)
NULLABLE_KEYS = ("gpu_embed_ratio", "torch_cpu_embed_ratio")  # null without CUDA / torch, saying why


@pytest.mark.slow
def test_bench_quick_reports_every_key(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "-o", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not [k for k in res if k.endswith("_error")], res
    for key in NUMERIC_KEYS:
        v = res.get(key)
        assert isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v), (key, v)
    for key in NULLABLE_KEYS:
        assert key in res, key
        assert res[key] is None or isinstance(res[key], int | float), (key, res[key])
        if res[key] is None:
            assert res.get(key.replace("_embed_ratio", "_note")), f"a null {key} says why"
    assert res["embed_compiled"] is True  # TensorFlow backend: the daemon embedded through XLA
    assert res["latency_events"] > 0
    assert res["machine"]["quick"] is True
    assert "| `e2e_ratio` |" in p.stdout  # the markdown table


def test_table_marks_targets() -> None:
    from bench.run import _table

    table = _table({"machine": {}, "e2e_ratio": 0.5, "embed_ratio": 1.2, "gpu_embed_ratio": None,
                    "detail": {"a": {"b": 1}}, "cpu": {"bare": 1.0}})
    assert "| `e2e_ratio` | 0.5 | >= 0.8: MISSED |" in table
    assert "| `embed_ratio` | 1.2 | >= 1.2: ok |" in table
    assert "| `gpu_embed_ratio` | null | >= 0.7: n/a |" in table
    assert "| `cpu` | bare=1.0 |" in table
    assert "detail" not in table


def test_histogram_quantile_between_scrapes() -> None:
    from bench.e2e import _hist_quantile_le
    from bench.scrape import Scrape

    name = "netsiam_record_to_event_seconds"

    def histogram(counts: dict[str, float]) -> list[tuple[float, float]]:
        text = f"# TYPE {name} histogram\n" + "".join(f'{name}_bucket{{le="{le}"}} {n}\n' for le, n in counts.items())
        return Scrape(text).buckets(name)

    before = histogram({"0.1": 5.0, "0.25": 5.0, "+Inf": 5.0})
    after = histogram({"0.1": 95.0, "0.25": 104.0, "+Inf": 105.0})
    assert _hist_quantile_le(before, after, 0.5) == 0.1
    assert _hist_quantile_le(before, after, 0.99) == 0.25
    assert _hist_quantile_le(before, after, 0.999) == math.inf
    assert _hist_quantile_le(after, after, 0.99) is None


def test_scrape_reads_a_daemons_metrics_by_name_and_labels() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from bench.scrape import Scrape
    from netsiam.detector.metrics import DetectorMetrics

    reg = CollectorRegistry()
    m = DetectorMetrics(reg)
    m.records_consumed.inc(7)
    m.records_invalid.labels(reason="schema").inc(2)
    m.records_invalid.labels(reason="not_json").inc(3)
    m.consumer_lag.labels(topic="a", partition="0").set(4)
    m.consumer_lag.labels(topic="a", partition="1").set(5)
    m.consumer_lag.labels(topic="b", partition="0").set(100)
    m.record_to_event_seconds.observe(0.2)
    s = Scrape(generate_latest(reg).decode())
    assert s.value("netsiam_records_consumed_total") == 7
    assert s.value("netsiam_records_invalid_total") == 5 and s.value("netsiam_records_invalid_total", reason="schema") == 2
    assert s.value("netsiam_consumer_lag", topic="a") == 9 and s.value("netsiam_consumer_lag") == 109
    assert s.value("netsiam_no_such_metric") == 0
    buckets = s.buckets("netsiam_record_to_event_seconds")
    assert buckets[-1] == (math.inf, 1.0) and dict(buckets)[0.1] == 0.0 and dict(buckets)[0.25] == 1.0


def test_scrape_can_leave_the_per_source_series_out() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from bench.scrape import Scrape, without
    from bench.sources import SOURCE_SERIES
    from netsiam.detector.metrics import DetectorMetrics

    reg = CollectorRegistry()
    m = DetectorMetrics(reg)
    m.track_sources(lambda: [(f"s{i}", 1.0 + i) for i in range(50)])
    m.windows_embedded.inc(3)
    text = generate_latest(reg).decode()
    assert text.count(SOURCE_SERIES) > 50
    kept = without(text, (SOURCE_SERIES,))
    assert SOURCE_SERIES not in kept and Scrape(kept).value("netsiam_windows_embedded_total") == 3
    assert Scrape(text).value(SOURCE_SERIES) == sum(1.0 + i for i in range(50))


def test_a_sample_asks_for_its_counters_only_and_prometheus_scrapes_at_the_shipped_interval() -> None:
    import yaml
    from prometheus_client import CollectorRegistry

    from bench.scrape import scrape
    from bench.sources import PROMETHEUS_YML, SAMPLED, SOURCE_SERIES, detector_scrape_interval
    from netsiam.detector.health import HealthServer
    from netsiam.detector.metrics import DetectorMetrics

    reg = CollectorRegistry()
    m = DetectorMetrics(reg)
    rendered: list[int] = []
    m.track_sources(lambda: rendered.append(1) or [("s1", 1.0)])
    m.records_consumed.inc(7)
    m.windows_embedded.inc(5)
    m.embed_batch_seconds.observe(0.5)
    m.embed_batch_size.observe(5)
    srv = HealthServer(reg, "127.0.0.1", 0, lambda: (True, "")).start()
    try:
        s = scrape(srv.port, names=SAMPLED)
        assert not rendered   # the per-source series was not rendered for a sample
        assert {n.name for n in s.samples} >= {"netsiam_records_consumed_total", "netsiam_windows_embedded_total",
                                               "netsiam_embed_batch_seconds_sum", "netsiam_embed_batch_size_sum",
                                               "netsiam_embed_batch_size_count"}
        assert s.value("netsiam_records_consumed_total") == 7 and s.value("netsiam_embed_batch_size_sum") == 5
        assert not [n for n in s.samples if n.name.startswith(("netsiam_commits", "netsiam_fault"))]
        assert scrape(srv.port).value(SOURCE_SERIES) == 1.0 and rendered   # a full scrape renders it
    finally:
        srv.stop()
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert detector_scrape_interval() == float(jobs["netsiam-detector"]["scrape_interval"].rstrip("s")) == 5.0


def test_process_figures_come_from_psutil() -> None:
    from bench.procstats import ForeignCpu, cpu_seconds, rss_bytes, rss_mib, thread_cpu_seconds

    me = os.getpid()
    assert rss_bytes() > 10 * 2**20 and rss_mib(me) == pytest.approx(rss_bytes() / 2**20, rel=0.1)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert rss_mib(gone.pid) is None                                 # reaped: no such process
    assert cpu_seconds(me) > 0
    threads = thread_cpu_seconds(me)
    assert threads["main"] > 0 and sum(threads.values()) <= cpu_seconds(me) + 0.05
    assert ForeignCpu([me])() >= 0.0


@pytest.mark.slow
def test_cpu_split_reports_each_stage_with_the_fast_path_off_and_on(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cpusplit import main

    assert main(["--sources", "4", "--minutes", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["cpusplit_records"] == 4 * 120
    for mode in ("plain", "compiled"):
        split = res[f"cpusplit_us_per_record_{mode}"]
        assert all(split[k] > 0 for k in ("feed", "embed", "apply"))
        assert split["total"] == pytest.approx(split["feed"] + split["embed"] + split["apply"], abs=0.2)


@pytest.mark.slow
def test_raise_costs_come_from_a_run_where_every_source_raises_and_one_where_none_does(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench.raises import main

    assert main(["--sources", "20"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["raises_events"] == 20 and res["raises_events_without_the_freeze"] == 0   # one raise per source
    assert res["raises_windows"] == 20 * 11
    assert res["raises_apply_us_per_window_calm"] > 0 and res["raises_to_bytes_us"] > 0
    assert res["raises_send_us_per_event"] > 0


def test_sources_search_doubles_then_bisects_to_the_largest_size_that_held() -> None:
    from bench.sources import Step, next_size, search

    assert next_size(0, None, 2000, resolution=0.2, cap=64_000) == 4000
    assert next_size(40_000, None, 40_000, resolution=0.2, cap=64_000) == 64_000
    assert next_size(64_000, None, 64_000, resolution=0.2, cap=64_000) is None
    assert next_size(4000, 8000, 8000, resolution=0.2, cap=64_000) == 6000
    assert next_size(6000, 7000, 7000, resolution=0.2, cap=64_000) is None      # within 20 %
    assert next_size(0, 2000, 2000, resolution=0.2, cap=64_000) == 1000         # the start failed: go down

    tried: list[int] = []

    def hold(n: int) -> Step:
        tried.append(n)
        return Step(n, n <= 6500, "held" if n <= 6500 else "lag")

    best, steps = search(hold, 2000, resolution=0.1, max_steps=10)
    assert tried == [2000, 4000, 8000, 6000, 7000, 6500] and best == 6500 and len(steps) == 6
    tried.clear()
    best, _ = search(hold, 2000, max_steps=3)                               # the step budget cuts it short
    assert tried == [2000, 4000, 8000] and best == 4000

    def driver_limited(n: int) -> Step:
        return Step(n, n < 4000, "held" if n < 4000 else "driver")

    best, steps = search(driver_limited, 2000)
    assert best == 2000 and steps[-1].why == "driver" and len(steps) == 2   # no bisection below the driver's limit


def test_sources_judge_needs_bounded_lag_no_drift_a_window_per_record_and_a_paced_driver() -> None:
    from bench.sources import Sample, judge

    a = Sample(t=0.0, sent=10_000, consumed=9_500, windows=5_000, daemon_cpu=1.0)
    b = Sample(t=20.0, sent=110_000, consumed=109_400, windows=105_000, daemon_cpu=21.0)
    ok, why, stats = judge(5000, a, b, max_lag=1500, behind_s=0.01)
    assert (ok, why) == (True, "held")
    assert stats["records_per_s"] == 4995 and stats["windows_per_s"] == 5000 and stats["daemon_cores"] == 1.0
    assert stats["max_lag_s"] == 0.3
    assert judge(5000, a, b, max_lag=10_000, behind_s=0.01)[1] == "lag"
    assert judge(5000, a, b, max_lag=1500, behind_s=0.9)[1] == "driver"
    slow = Sample(t=20.0, sent=110_000, consumed=100_000, windows=96_000)           # 4.5 % behind the sent rate
    assert judge(5000, a, slow, max_lag=9000, behind_s=0.0)[1] == "drift"
    few = Sample(t=20.0, sent=110_000, consumed=109_400, windows=80_000)
    assert judge(5000, a, few, max_lag=1500, behind_s=0.0)[1] == "windows"


@pytest.mark.slow
@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_pace_sends_at_the_rate_and_records_each_ack(tmp_path: Path, client: str) -> None:
    from bench.common import new_topics
    from bench.e2e import read_all
    from netsiam.broker import start_broker

    lines = [json.dumps({"source": f"s{i % 7}", "ts": 1000.0 + i // 7, "metrics": {"OutgoingCall": i}})
             for i in range(700)]
    trace, acks = tmp_path / "t.jsonl", tmp_path / "acks.json"
    trace.write_text("\n".join(lines) + "\n")
    with start_broker(0) as bp:
        t = new_topics(bp.bootstrap, "pace", 2)
        p = subprocess.run([sys.executable, "-m", "bench.pace", str(trace), "--bootstrap", bp.bootstrap,
                            "--topic", t.samples, "--rate", "1000", "--acks", str(acks), "--client", client],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        stats = json.loads(p.stdout)
        got = read_all(bp.bootstrap, t.samples, 2)
    assert stats["client"] == client and stats["sent"] == 700 and stats["unacked"] == 0
    assert 0.6 < stats["seconds"] < 5.0  # 700 records at 1,000/s: paced, not sent at once
    ack = json.loads(acks.read_text())
    assert [(a[0], a[1]) for a in ack] == [(json.loads(ln)["source"], json.loads(ln)["ts"]) for ln in lines]
    ms = [a[2] for a in ack]
    assert all(m > 0 for m in ms) and ms[-1] - ms[0] > 500  # each ack time is when it came, in pace
    assert sorted(m.value for m in got) == sorted(ln.encode() for ln in lines)
    assert {m.key for m in got} == {f"s{i}".encode() for i in range(7)}  # keyed by source


@pytest.mark.slow
def test_latency_floor_measures_every_record_of_the_paced_stream(tmp_path: Path) -> None:
    from bench.common import Ctx
    from bench.latency_floor import floor

    (row,) = floor(Ctx(quick=True, tmp=tmp_path), [2000.0])
    assert row["polled"] == row["records"] > 1000
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] < 10_000
