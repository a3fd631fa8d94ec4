"""``make demo``: the whole product on one machine, on the embedded defaults, in a few minutes.

1. import a real SIPp recording from a testbed the shipped model never saw (tests/data/sipp_b);
2. evaluate the shipped model on it, beside the per-second expert rule and the raw baseline
   (report summary + plots);
3. start the embedded Kafka-compatible broker and the daemon, replay the recording into Kafka at
   20x its pace, print each fault event as it arrives, then the labelled episodes vs the raised
   events, with how many seconds after each fault began it was raised.

Every step runs the real ``netsiam`` verbs, exactly as an operator would type them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from netsiam.traceio import read_labels

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("NETSIAM_DEMO_OUT", "out/demo"))
SIPP_FIXTURE = REPO / "tests" / "data" / "sipp_b_stat.csv"
SIPP_LABELS = REPO / "tests" / "data" / "sipp_b_labels.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def netsiam(*args: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "netsiam", *args]
    print(f"\n$ netsiam {' '.join(args)}", flush=True)
    p = subprocess.run(cmd, text=True, capture_output=quiet)
    if p.returncode != 0:
        if quiet:
            sys.stderr.write(p.stderr)
        raise SystemExit(f"demo: `netsiam {args[0]}` failed with exit code {p.returncode}")
    return p


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def collect_events(bootstrap: str, topic: str, events: list[dict[str, Any]], stop: threading.Event) -> None:
    from kafka import KafkaConsumer

    # kafka-python logs a traceback when its socket closes under a reader at shutdown; not news
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=500)
    try:
        while not stop.is_set():
            for msg in consumer:
                ev = json.loads(msg.value)
                events.append(ev)
                print(f"  event  {ev['state']:<8} {ev['fault']:<15} {ev['source']:<8} "
                      f"started {ev['started_at']:.0f}  window_end {ev['window_end']:.0f}  "
                      f"distance {ev['distance']:.3f}", flush=True)
                if stop.is_set():
                    break
    finally:
        consumer.close()


def episode_table(labels_path: Path, events: list[dict[str, Any]]) -> tuple[str, int, int]:
    raised = [e for e in events if e["state"] == "raised"]
    rows = ["| source | label | start | end | raised as | raised after s | cleared after end s |",
            "|---|---|---|---|---|---|---|"]
    hit = 0
    episodes = read_labels(labels_path)
    for iv in sorted(episodes, key=lambda i: (i.source, i.start)):
        match = [e for e in raised if e["source"] == iv.source and iv.start - 30 <= e["started_at"] <= iv.end]
        if match:
            hit += 1
            e = min(match, key=lambda e: e["window_end"])
            clear = [c for c in events if c["state"] == "cleared" and c["fault"] == e["fault"]
                     and c["source"] == e["source"] and c["started_at"] == e["started_at"]]
            after = f"{clear[0]['window_end'] - iv.end:.1f}" if clear else "(active)"
            rows.append(f"| {iv.source} | {iv.label} | {iv.start:.0f} | {iv.end:.0f} | "
                        f"{', '.join(m['fault'] for m in match)} | {e['window_end'] - iv.start:.1f} | {after} |")
        else:
            rows.append(f"| {iv.source} | {iv.label} | {iv.start:.0f} | {iv.end:.0f} | (missed) | | |")
    return "\n".join(rows), hit, len(episodes)


def main() -> int:
    t_start = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    trace, labels = OUT / "sipp_b.jsonl", SIPP_LABELS

    print("== 1. data: a real SIPp recording (50 calls/s, two frozen far ends, two 503 surges) from a testbed "
          "the shipped model never saw")
    netsiam("import", "sipp", str(SIPP_FIXTURE), "--source", "sbc-b", "-o", str(trace))
    n_records = sum(1 for _ in trace.open())
    print(f"   {n_records} records, {len(read_labels(labels))} labelled fault episodes -> {trace}")

    print("\n== 2. evaluate the shipped model on it, beside the expert rule and the raw baseline")
    netsiam("evaluate", "--data", str(trace), "--labels", str(labels), "--json", str(OUT / "report.json"),
            "--plots", str(OUT / "plots"))
    plots = sorted((OUT / "plots").glob("*.png"))
    print("   plots: " + ", ".join(str(p) for p in plots))

    print("\n== 3. streaming: embedded broker + daemon, replay the trace into Kafka")
    port, mport = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    events: list[dict[str, Any]] = []
    try:
        print(f"$ netsiam broker --port {port}")
        procs.append(subprocess.Popen([sys.executable, "-m", "netsiam", "broker", "--port", str(port)]))
        if not wait_port(port, 30):
            raise SystemExit("demo: the broker did not start")
        time.sleep(1.0)
        print(f"$ netsiam detect --bootstrap {bootstrap} --metrics-port {mport} --group netsiam-demo")
        procs.append(subprocess.Popen([sys.executable, "-m", "netsiam", "detect", "--bootstrap", bootstrap,
                                       "--metrics-port", str(mport), "--group", "netsiam-demo"]))
        if not wait_http(f"http://127.0.0.1:{mport}/healthz", 90):
            raise SystemExit("demo: the daemon did not become ready")
        print(f"   metrics: http://127.0.0.1:{mport}/metrics   health: http://127.0.0.1:{mport}/healthz")
        consumer = threading.Thread(target=collect_events, args=(bootstrap, "netsiam.faults", events, stop),
                                    daemon=True)
        consumer.start()
        netsiam("replay", str(trace), "--bootstrap", bootstrap, "--speed", "20", "--quiet")
        expected = 2 * len(read_labels(labels))
        deadline = time.monotonic() + 60
        last = -1
        while time.monotonic() < deadline:  # until events stop arriving
            time.sleep(3)
            if len(events) == last and len(events) >= expected:
                break
            last = len(events)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        for line in metrics.splitlines():
            if line.startswith(("netsiam_records_consumed_total", "netsiam_windows_embedded_total",
                                "netsiam_records_invalid_total{reason=\"not_json\"}")):
                print("   " + line)
    finally:
        stop.set()
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    table, hit, total = episode_table(labels, events)
    print("\n== labelled episodes vs raised events\n" + table)
    print(f"\n{hit}/{total} episodes raised; {len([e for e in events if e['state'] == 'raised'])} raised, "
          f"{len([e for e in events if e['state'] == 'cleared'])} cleared events; "
          f"demo took {time.monotonic() - t_start:.0f} s. Outputs in {OUT}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
