"""Set-up, sampling and verdict of a soak run (the feed runs in its own process, :mod:`.feed`).

The embedded broker, fresh topics, one ``netsiam detect`` subprocess; unless ``--rate`` is given, a
second, short-lived daemon first measures the maximum rate (the soaked daemon must not see that burst:
its freed heap would hide a slow leak) and half of it is offered. Every second the daemon's and the
broker's RSS and the CPU other processes used are sampled, every ``sample_s`` the daemon's metrics.
After the feed stops the group must commit every record; nothing may be lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, Ctx, new_topics, trace_lines, unique_name
from bench.e2e import PARTITIONS, DaemonProc, daemon_config, daemon_rate, daemons
from bench.procstats import ForeignCpu, cpu_seconds, rss_mib

from .criteria import WARMUP_FRACTION, assess, criteria, percentile
from .feed import feed

__all__ = ["COPIES", "SIM_SOURCES", "main", "soak", "summary"]

SIM_SOURCES, COPIES, SIM_MINUTES, SEED = 20, 10, 30, 321   # 200 sources, a 30-minute trace looped
PREFIX = "soak-"
MAX_RECORDS = 100_000          # pre-filled records for the max-rate measurement (300k for runs >= 10 min)
DRAIN_TIMEOUT_S = 120.0
# The feed (kafka-python, one process) keeps its schedule up to about this rate beside the daemon and
# the broker on 2 cores; beyond it the soak finds its own feed behind and judges nothing (one daemon's
# max is ~31k records/s since 2026-12-03, half of it 15k: the feed fell behind in 79 % of a run).
FEED_MAX_RECORDS_PER_S = 8000.0


def _committed(admin: Any, group: str, topic: str) -> dict[int, int]:
    offs = admin.list_group_offsets({group: None}).get(group, {})
    return {int(tp.partition): int(o.offset) for tp, o in offs.items() if tp.topic == topic}


def _table(res: dict[str, Any], rows: int = 10) -> str:
    """One line per tenth of the run: RSS, records/s consumed, lag, events, latency p50/p99."""
    dur = res["seconds"]
    samples, lats, rss = res["samples"], res["_lat"], res["_rss"]
    lines = ["   t (s)   RSS MiB   rec/s in    lag   events   p50 ms   p99 ms  other CPU"]
    fc = res["_foreign"]
    for i in range(rows):
        a, b = dur * i / rows, dur * (i + 1) / rows
        r = [m for t, m in rss if a <= t < b]
        s = [x for x in samples if a <= x["t"] < b]
        prev = [x for x in samples if x["t"] < a][-1:]
        s = prev + s
        f = [c for t, c in fc if a <= t < b]
        v = np.asarray([ms for t, ms in lats if a <= t < b])
        rec = (s[-1]["consumed"] - s[0]["consumed"]) / max(s[-1]["t"] - s[0]["t"], 1e-9) if len(s) > 1 else math.nan
        lag = float(np.mean([x["lag"] for x in s])) if s else math.nan
        p50 = np.percentile(v, 50) if len(v) else math.nan
        p99 = np.percentile(v, 99) if len(v) else math.nan
        lines.append(f"{a:4.0f}-{b:<4.0f} {np.mean(r) if r else math.nan:8.1f} {rec:10.0f} {lag:6.0f} {len(v):8d}"
                     f" {p50:8.0f} {p99:8.0f} {np.mean(f) if f else math.nan:10.2f}")
    return "\n".join(lines)


# -- the soak ----------------------------------------------------------------------------------------------
def soak(minutes: float, rate: float | None = None, model: Path | None = None, *, sample_s: float | None = None,
         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the soak; returns the summary (see the module docstring), with ``samples``, ``ok``, ``flat``,
    ``nothing_lost`` and ``reasons``. Raises only when the set-up itself fails."""
    from kafka import KafkaAdminClient

    from netsiam.broker import start_broker, stop_process
    from netsiam.replay import replay_lines
    from netsiam.serving import default_model_path

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    duration = minutes * 60.0
    sample_s = sample_s or (10.0 if duration >= 600 else 5.0)
    model = Path(model) if model else default_model_path()
    window = json.loads((model / "manifest.json").read_text())["window"]
    ctx = Ctx(quick=False, model=model)
    res: dict[str, Any] = {"minutes": minutes, "model": str(model), "criteria": criteria()}
    t_setup = time.monotonic()
    try:
        with start_broker(0, log_path=ctx.tmp / "tansu.log") as bp:
            admin = KafkaAdminClient(bootstrap_servers=bp.bootstrap)
            try:
                topics = new_topics(bp.bootstrap, "soak", PARTITIONS)
                group = unique_name("soak")
                # the soaked daemon loads while the max-rate topic fills
                daemon = DaemonProc(daemon_config(ctx, bp.bootstrap, topics, group), model, ctx.tmp / "soak-daemon.log")
                try:
                    if rate is None:
                        n = 300_000 if minutes >= 10 else MAX_RECORDS
                        mt = new_topics(bp.bootstrap, "max", PARTITIONS)
                        lines = trace_lines(20, math.ceil(n / (20 * 10 * 60)), seed=99, copies=10)[:n]
                        stats = replay_lines(lines, bp.bootstrap, mt.samples)
                        del lines
                        if stats.failed:
                            raise RuntimeError(f"pre-fill failed: {stats.error}")
                        daemon.wait_for("partitions assigned: ", 180)
                        gm = unique_name("max")
                        with daemons(1, ctx, bp.bootstrap, mt, gm) as procs:
                            other = ForeignCpu([p.proc.pid for p in procs] + [daemon.proc.pid, bp.proc.pid, os.getpid()])
                            mx = daemon_rate(procs, admin, gm, mt.samples, n, bp.proc.pid)
                            res["max_other_cpu_cores"] = round(other(), 2)
                        res["max_records_per_s"] = round(mx["rate"])
                        res["max_measure_records"] = n
                        rate = min(mx["rate"] / 2.0, FEED_MAX_RECORDS_PER_S)
                        res["rate_source"] = ("half the measured max" if rate < FEED_MAX_RECORDS_PER_S
                                              else "the feed's cap (half the measured max is beyond it)")
                        say(f"soak: daemon max {mx['rate']:.0f} records/s ({n} records, other processes used "
                            f"{res['max_other_cpu_cores']} cores meanwhile); offering {rate:.0f}/s")
                    else:
                        res["max_records_per_s"] = None
                        res["rate_source"] = "given"
                        daemon.wait_for("partitions assigned: ", 180)
                    res["target_records_per_s"] = round(rate)
                    res["setup_s"] = round(time.monotonic() - t_setup, 1)
                    res.update(_run(daemon, bp, admin, topics, group, rate, duration, sample_s, window, say))
                    code = stop_process(daemon.proc, 60)
                    res["daemon_exit"] = code
                    res["daemon_stop_logged"] = "stopped: consumed" in daemon.text()
                finally:
                    if daemon.proc.poll() is None:
                        stop_process(daemon.proc, 30)
                    res["_daemon_log_tail"] = daemon.text()[-3000:]
            finally:
                admin.close()
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    lost = res["lost_reasons"]
    if res.get("daemon_exit") != 0:
        lost.append(f"daemon exit status {res.get('daemon_exit')}")
    res["nothing_lost"] = not lost
    res["ok"] = bool(res["flat"] and res["nothing_lost"])
    res["reasons"] = res["reasons"] + lost
    if res["ok"]:
        res.pop("_daemon_log_tail")
    return res


def _run(daemon: DaemonProc, bp: Any, admin: Any, topics: Any, group: str, rate: float, duration: float,
         sample_s: float, window: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    spec = {"bootstrap": bp.bootstrap, "topic": topics.samples, "faults": topics.faults, "rate": rate,
            "seconds": duration, "partitions": PARTITIONS, "sim_sources": SIM_SOURCES,
            "sim_minutes": SIM_MINUTES, "copies": COPIES, "seed": SEED, "prefix": PREFIX,
            "interval_s": window["interval_s"], "stride": window["stride"]}
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    feeder = mp.Process(target=feed, args=(child, spec), name="soak-feed", daemon=True)
    feeder.start()
    child.close()
    pid, broker_pid = daemon.proc.pid, bp.proc.pid
    t0: float | None = None
    ticks: list[dict[str, Any]] = []
    lat: list[tuple[float, float]] = []
    rss: list[tuple[float, float]] = []
    foreign: list[tuple[float, float]] = []
    broker_rss: list[tuple[float, float]] = []
    samples: list[dict[str, Any]] = []
    done: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    drained_at: float | None = None
    stop_sent = False
    next_rss = next_sample = 0.0
    sampled_ticks = 0
    end_offsets: list[int] = []
    committed: dict[int, int] = {}
    foreign_cpu: ForeignCpu | None = None
    try:
        while final is None:
            if not feeder.is_alive() and not parent.poll():
                raise RuntimeError(f"feed process died (exit {feeder.exitcode})")
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({daemon.proc.returncode}) during the soak:\n{daemon.text()[-3000:]}")
            if parent.poll(0.2):
                try:
                    msg = parent.recv()
                except EOFError:
                    raise RuntimeError(f"feed process died (exit {feeder.exitcode})") from None
                kind = msg["type"]
                if kind == "error":
                    raise RuntimeError(f"feed failed:\n{msg['error']}")
                if kind == "start":
                    t0 = float(msg["t"])
                    say(f"soak: feeding {rate:.0f} records/s for {duration / 60:.1f} min")
                    continue
                assert t0 is not None
                if foreign_cpu is None:
                    foreign_cpu = ForeignCpu([pid, broker_pid, os.getpid(), feeder.pid or 0])
                lat.extend(((c / 1000.0 - t0), ms) for c, ms in msg["lat"])
                ticks.append({k: v for k, v in msg.items() if k != "lat"})
                if kind == "done":
                    done = msg
                    end_offsets = list(msg["end_offsets"])
                    say(f"soak: feed done in {msg['seconds']:.0f} s; draining")
                elif kind == "final":
                    final = msg
            if t0 is None:
                continue
            now = time.time() - t0
            if now >= next_rss:
                m = rss_mib(pid)
                if m is not None:
                    rss.append((round(now, 2), m))
                b = rss_mib(broker_pid)
                if b is not None:
                    broker_rss.append((round(now, 2), b))
                if foreign_cpu is not None:
                    foreign.append((round(now, 2), round(foreign_cpu(), 3)))
                next_rss += 1.0
            if now >= next_sample:
                with contextlib.suppress(Exception):
                    s = daemon.scrape()
                    committed = _committed(admin, group, topics.samples)
                    samples.append({
                        "t": round(now, 2), "rss_mib": rss[-1][1] if rss else None,
                        "consumed": s.value("netsiam_records_consumed_total"),
                        "daemon_cpu_s": round(cpu_seconds(pid), 2),
                        "broker_cpu_s": round(cpu_seconds(broker_pid), 2),
                        "foreign_cores": foreign[-1][1] if foreign else None,
                        "lag": s.value("netsiam_consumer_lag", topic=topics.samples),
                        "committed": sum(committed.values()),
                        "sent": ticks[-1]["sent"] if ticks else 0,
                        # how far the feed fell behind its schedule since the last sample (it then catches up)
                        "feed_behind_s": max((t["behind_s"] for t in ticks[sampled_ticks:]), default=0.0),
                        "events": sum(1 for t, _ in lat if t >= now - sample_s)})
                    sampled_ticks = len(ticks)
                    x = samples[-1]
                    say(f"soak: t={now:5.0f}s rss={x['rss_mib'] or 0:.1f} MiB consumed={x['consumed']:.0f} "
                        f"lag={x['lag']:.0f} events={len(lat)} other-cpu={x['foreign_cores'] or 0:.2f}")
                next_sample += sample_s
            if done is not None and not stop_sent:
                with contextlib.suppress(Exception):
                    committed = _committed(admin, group, topics.samples)
                caught_up = all(committed.get(p, 0) >= e for p, e in enumerate(end_offsets))
                timed_out = time.time() - (t0 + float(done["seconds"])) > DRAIN_TIMEOUT_S
                if caught_up and drained_at is None:
                    drained_at = time.time()
                if (drained_at is not None and time.time() - drained_at > 2.0) or timed_out:
                    parent.send("stop")  # events of the last records had 2 s to reach the faults topic
                    stop_sent = True
        feeder.join(30)
    finally:
        if feeder.is_alive():
            feeder.terminate()
            feeder.join(5)
        parent.close()
    assert done is not None and final is not None and t0 is not None
    scrape = daemon.scrape()
    with contextlib.suppress(Exception):
        committed = _committed(admin, group, topics.samples)
    seconds = float(done["seconds"])
    out: dict[str, Any] = {
        "seconds": round(seconds, 1), "sources": SIM_SOURCES * COPIES,
        "offered_records_per_s": round(done["sent"] / seconds), "producer_max_behind_s": max(t["behind_s"] for t in ticks),
        "trace_loops": done["loops"],
        "records_produced": done["acked"], "records_failed": done["failed"],
        "records_consumed": int(scrape.value("netsiam_records_consumed_total")),
        "dead_letters": int(scrape.value("netsiam_records_invalid_total")),
        "windows_embedded": int(scrape.value("netsiam_windows_embedded_total")),
        "events_on_topic": final["events"], "events_acked_by_daemon": int(scrape.value("netsiam_fault_events_total")),
        "events_matched": final["matched"],
        "end_offsets": end_offsets, "committed": [committed.get(p, 0) for p in range(PARTITIONS)],
        "drain_s": None if drained_at is None else round(drained_at - (t0 + seconds), 1),
        "lag_max": max((s["lag"] for s in samples if s["t"] <= seconds), default=None),
        "broker_rss_mib_start": round(broker_rss[0][1], 1) if broker_rss else None,
        "broker_rss_mib_end": round(broker_rss[-1][1], 1) if broker_rss else None,
        "daemon_rss_mib_start": round(rss[0][1], 1) if rss else None,
        "daemon_rss_mib_end": round(max((m for t, m in rss if t <= seconds), default=0.0), 1) if rss else None,
    }
    for name, frac in (("first", (WARMUP_FRACTION, WARMUP_FRACTION + (1 - WARMUP_FRACTION) / 3)),
                       ("last", (1 - (1 - WARMUP_FRACTION) / 3, 1.0))):
        sel = [s for s in samples if frac[0] * seconds <= s["t"] <= frac[1] * seconds]
        out[f"lag_mean_{name}_third"] = round(float(np.mean([s["lag"] for s in sel])), 1) if sel else None
        if len(sel) > 1 and sel[-1]["consumed"] > sel[0]["consumed"]:
            for who in ("daemon", "broker"):
                out[f"{who}_cpu_us_per_record_{name}_third"] = round(
                    (sel[-1][f"{who}_cpu_s"] - sel[0][f"{who}_cpu_s"]) / (sel[-1]["consumed"] - sel[0]["consumed"]) * 1e6, 1)
    out.update(assess(rss, lat, seconds, foreign=foreign, bin_s=sample_s, unmatched=final["unmatched"],
                      feed_behind=[(s["t"], s["feed_behind_s"]) for s in samples if s["t"] <= seconds],
                      cpu_us_per_record=(out.get("daemon_cpu_us_per_record_first_third"),
                                         out.get("daemon_cpu_us_per_record_last_third"))))
    lost = []
    if done["failed"] or done.get("error"):
        lost.append(f"{done['failed']} sends failed: {done.get('error')}")
    if out["records_consumed"] != out["records_produced"]:
        lost.append(f"consumed {out['records_consumed']} != produced {out['records_produced']}")
    if out["committed"] != end_offsets:
        lost.append(f"committed offsets {out['committed']} != end offsets {end_offsets}")
    if out["dead_letters"]:
        lost.append(f"{out['dead_letters']} records dead-lettered")
    if out["events_on_topic"] != out["events_acked_by_daemon"]:
        lost.append(f"{out['events_on_topic']} events on the topic != {out['events_acked_by_daemon']} acked by the daemon")
    if not out["events_on_topic"]:
        lost.append("no fault events at all")
    out["lost_reasons"] = lost
    out["samples"] = samples
    out["_rss"] = rss
    out["_lat"] = lat
    out["_foreign"] = foreign
    out["broker_rss"] = broker_rss[:: max(1, len(broker_rss) // 200)]
    return out


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """The result without its series (the JSON line printed)."""
    return {k: v for k, v in res.items() if k not in ("samples", "broker_rss", "lost_reasons") and not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    import bench.soak

    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=bench.soak.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="loaded duration (default 20)")
    ap.add_argument("--rate", type=float, default=None, help="records/s to offer (default: half the measured max)")
    ap.add_argument("--model", default=None, help="artifact directory (default: the shipped model)")
    ap.add_argument("-o", "--out", default=str(REPO / "bench" / "soak.json"), help="JSON report (default bench/soak.json)")
    args = ap.parse_args(argv)
    res = soak(args.minutes, args.rate, Path(args.model) if args.model else None)
    table = _table(res)
    full = {**summary(res), "samples": res["samples"],
            "rss": [(t, round(m, 2)) for t, m in res["_rss"]], "broker_rss": res["broker_rss"],
            "foreign_cpu_cores": res["_foreign"],
            "latency_bins": _bins(res["_lat"], res["seconds"], 10.0 if res["seconds"] >= 600 else 5.0)}
    if "_daemon_log_tail" in res:
        full["daemon_log_tail"] = res["_daemon_log_tail"]
    Path(args.out).write_text(json.dumps(full, indent=1) + "\n")
    print(table)
    print(json.dumps(summary(res)))
    return 0 if res["ok"] else 1


def _bins(lat: Sequence[tuple[float, float]], seconds: float, bin_s: float) -> list[dict[str, Any]]:
    out = []
    arr = np.asarray(lat, dtype=np.float64).reshape(-1, 2)
    for i in range(math.ceil(seconds / bin_s)):
        v = arr[(arr[:, 0] >= i * bin_s) & (arr[:, 0] < (i + 1) * bin_s), 1]
        out.append({"t": i * bin_s, "events": len(v), "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99)})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
