"""``make demo``: the whole product on one machine, on the embedded defaults, in a few minutes.

1. import a real SIPp recording from a testbed the shipped model never saw (tests/data/sipp_b);
2. evaluate the shipped model on it, beside the per-second expert rule and the raw baseline
   (report summary + plots);
3. start the embedded Kafka-compatible broker and the daemon (serving a copy of the shipped model),
   replay the recording into Kafka at 20x its pace, print each fault event as it arrives, then the
   labelled episodes vs the raised events, with how many seconds after each fault began it was raised;
4. an operator teaches it: another real recording with a fault the model never saw (the far end
   answering 200-300 ms late) is raised ``unknown``; one ``netsiam feedback`` on that event names it
   ``degraded``; the running daemon reloads the new model version and raises the fault's next
   episode as ``degraded``; ``netsiam model history`` shows the lineage.

Every step runs the real ``netsiam`` verbs, exactly as an operator would type them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
NOVEL = REPO / "deploy" / "testbed" / "corpus" / "novel_r70_h8"   # _stat.csv.gz, _labels.csv


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


def split_trace(trace: Path, cut: float, first: Path, rest: Path) -> None:
    """The records before ``cut`` (record time) into ``first``, the others into ``rest``."""
    lines = [line for line in trace.read_bytes().splitlines() if line]
    first.write_bytes(b"".join(x + b"\n" for x in lines if json.loads(x)["ts"] < cut))
    rest.write_bytes(b"".join(x + b"\n" for x in lines if json.loads(x)["ts"] >= cut))


def served_version(mport: int) -> str | None:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
        text = r.read().decode()
    return next((s.labels["version"] for fam in text_string_to_metric_families(text) if fam.name == "netsiam_model_info"
                 for s in fam.samples), None)


def wait_events(events: list[dict[str, Any]], done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(events):
        time.sleep(0.5)


def teach(bootstrap: str, mport: int, model: Path, events: list[dict[str, Any]]) -> None:
    """Step 4: a never-seen fault raised unknown, one feedback, the daemon reloads, the next episode is named."""
    trace, labels = OUT / "novel.jsonl", NOVEL.with_name(NOVEL.name + "_labels.csv")
    netsiam("import", "sipp", str(NOVEL.with_name(NOVEL.name + "_stat.csv.gz")), "--source", "sbc-n2", "-o", str(trace))
    slow = [iv for iv in read_labels(labels) if iv.label == "degraded"]
    first, rest = OUT / "novel_part1.jsonl", OUT / "novel_part2.jsonl"
    split_trace(trace, slow[0].end + 30, first, rest)
    seen = len(events)
    netsiam("replay", str(first), "--bootstrap", bootstrap, "--speed", "20", "--quiet")
    wait_events(events, lambda evs: any(e["source"] == "sbc-n2" and e["state"] == "cleared" for e in evs[seen:]), 60)
    unknown = [e for e in events[seen:] if e["state"] == "raised" and e["fault"] == "unknown"]
    if not unknown:
        raise SystemExit("demo: the never-seen fault was not raised unknown")
    print("   the operator looks: the far end answers 200-300 ms late; call it 'degraded'")
    before = served_version(mport)
    netsiam("feedback", unknown[0]["event_id"], "--label", "degraded", "--bootstrap", bootstrap,
            "--model", str(model), "--by", "demo", "--note", "far end answers late")
    written = json.loads((model / "manifest.json").read_text())["created_at"]   # when feedback wrote the version
    while served_version(mport) == before and time.time() - written < 30:
        time.sleep(0.1)
    print(f"   the daemon serves {served_version(mport)} at most {time.time() - written:.1f} s after it was written "
          f"(was {before})")
    netsiam("model", "history", "--model", str(model))
    seen = len(events)
    netsiam("replay", str(rest), "--bootstrap", bootstrap, "--speed", "20", "--quiet")
    wait_events(events, lambda evs: sum(e["source"] == "sbc-n2" and e["state"] == "cleared" for e in evs[seen:]) >= 2,
                60)
    table, hit, total = episode_table(labels, [e for e in events if e["source"] == "sbc-n2"])
    print("\n== the never-seen recording: labelled episodes vs raised events (feedback after the first)\n" + table)
    taught = [e for e in events[seen:] if e["source"] == "sbc-n2" and e["state"] == "raised" and e["fault"] == "degraded"]
    if not taught:
        raise SystemExit("demo: after the feedback, the fault's next episode was not raised 'degraded'")


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
    model = OUT / "model"
    # a fresh copy of the shipped model, the one the operator teaches: a copy an earlier run taught
    # already knows the fault this run shows as never seen
    shutil.rmtree(model, ignore_errors=True)
    netsiam("model", "copy", str(model))
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
        print(f"$ netsiam detect --bootstrap {bootstrap} --metrics-port {mport} --group netsiam-demo --model {model}")
        procs.append(subprocess.Popen([sys.executable, "-m", "netsiam", "detect", "--bootstrap", bootstrap,
                                       "--metrics-port", str(mport), "--group", "netsiam-demo",
                                       "--model", str(model)]))
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
        table, hit, total = episode_table(labels, [e for e in events if e["source"] == "sbc-b"])
        print("\n== labelled episodes vs raised events\n" + table)
        print("\n== 4. an operator teaches it: a fault it never saw, from another real recording")
        teach(bootstrap, mport, model, events)
    finally:
        stop.set()
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"\n{hit}/{total} episodes of {trace.name} raised; {len([e for e in events if e['state'] == 'raised'])} raised, "
          f"{len([e for e in events if e['state'] == 'cleared'])} cleared events; "
          f"demo took {time.monotonic() - t_start:.0f} s. Outputs in {OUT}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
