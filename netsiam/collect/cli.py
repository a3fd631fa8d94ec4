"""``netsiam collect sipp|pcap`` and ``netsiam dump``: arguments, signals, metrics endpoint, glue.

    netsiam collect sipp STAT.csv [STAT2.csv ...] --source NAME [--follow] [--bootstrap HOST:PORT | -o TRACE.jsonl|-]
    netsiam collect pcap --interface IF [--filter BPF] [--bootstrap HOST:PORT | -o TRACE.jsonl|-]
    netsiam dump [--bootstrap HOST:PORT] [--from TS] [--to TS] [--source NAME ...] -o TRACE.jsonl|- [--labels LABELS.csv]

Without ``-o`` a collector publishes to ``kafka.bootstrap_servers`` (``--bootstrap`` overrides the
address only; TLS and SASL settings always come from ``kafka.*``).

SIGTERM/SIGINT stop a collector cleanly: it stops reading, waits for outstanding acks, saves its
state and exits 0. Logs go to stderr; records to ``-o -`` go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from netsiam.argtypes import bootstrap, port, positive, source
from netsiam.config import Config
from netsiam.errors import ServiceError

__all__ = ["DEFAULT_METRICS_PORTS", "add_parsers", "cli_collect", "cli_dump"]

log = logging.getLogger("netsiam.collect")

# /metrics of each collector with --bootstrap (the daemon has 9108); with -o only when asked
DEFAULT_METRICS_PORTS = {"sipp": 9109, "pcap": 9110}


def _outputs(q: argparse.ArgumentParser, kind: str) -> None:
    g = q.add_mutually_exclusive_group()
    g.add_argument("--bootstrap", type=bootstrap, help="HOST:PORT of the Kafka cluster to publish to (default: kafka.bootstrap_servers)")
    g.add_argument("-o", "--output", help="append records to this JSON Lines file instead of publishing; - = stdout")
    q.add_argument("--topic", default=None, help="samples topic (default: kafka.topics.samples)")
    q.add_argument("--metrics-port", type=port, default=None,
                   help=f"/metrics port (default {DEFAULT_METRICS_PORTS[kind]} when publishing, none with -o; "
                        "0 = any free port)")
    q.add_argument("--buffer", type=positive, default=None,
                   help="records held while the broker is away before reading blocks (default 100000)")


def add_parsers(sub: Any, common: Any) -> None:
    """Add ``collect`` and ``dump`` to the ``netsiam`` sub-command parser."""
    p = sub.add_parser("collect", help="live input: follow SIPp statistics or capture SIP, publish records")
    csub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = csub.add_parser("sipp", help="follow a running SIPp's -trace_stat file(s): one source")
    common(q)
    q.add_argument("files", nargs="+", help="SIPp statistics files of one source (parts of one run, or restarts)")
    q.add_argument("--source", type=source, required=True, help="source name of these records")
    q.add_argument("--follow", action="store_true",
                   help="keep following the files (like tail -F), riding out broker outages; without it, the files "
                        "are read once and a broker or topic that is not there is an error at start")
    q.add_argument("--state", default=None,
                   help="state file: resume after the last published row (default when publishing: "
                        "$STATE_DIRECTORY or ~/.local/state/netsiam; 'none' = no state)")
    _outputs(q, "sipp")
    q = csub.add_parser("pcap", help="capture SIP on an interface: per-second records per SIP peer")
    common(q)
    q.add_argument("--interface", "-i", required=True, help="capture interface (e.g. eth0, lo)")
    q.add_argument("--filter", "-f", default="", help="capture filter (BPF), e.g. 'udp port 5060'")
    q.add_argument("--write", default="", metavar="CAPTURE.pcapng",
                   help="also write the SIP packets to this capture file (overwritten): `import pcap` on it "
                        "gives the same records")
    _outputs(q, "pcap")

    p = sub.add_parser("dump", help="topics -> trace JSONL for a time range, fault events -> draft labels CSV")
    common(p)
    p.add_argument("--bootstrap", type=bootstrap, default=None, help="HOST:PORT (default: kafka.bootstrap_servers)")
    p.add_argument("--topic", default=None, help="samples topic (default: kafka.topics.samples)")
    p.add_argument("--faults-topic", default=None, help="fault events topic (default: kafka.topics.faults)")
    p.add_argument("--from", dest="start", default=None, help="first ts to keep (epoch or RFC 3339)")
    p.add_argument("--to", dest="end", default=None, help="keep ts before this (epoch or RFC 3339)")
    p.add_argument("--source", action="append", default=[], help="keep only this source (repeatable)")
    p.add_argument("-o", "--output", required=True, help="trace JSONL to write; - = stdout")
    p.add_argument("--labels", default=None, help="also write raised/cleared episodes as a draft labels CSV")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python logs every refused connection at ERROR; the collector says once that the broker is away
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cli_collect(args: argparse.Namespace, cfg: Config) -> int:
    from prometheus_client import CollectorRegistry

    from netsiam.collect.metrics import CollectMetrics
    from netsiam.collect.sink import DEFAULT_MAX_PENDING, KafkaSink, Sink, StreamSink
    from netsiam.metricsserver import serve_metrics

    _setup_logging()
    if args.kind == "sipp":
        from netsiam.collect.sipp import check_paths

        check_paths(args.files, args.follow)   # before the broker: a typo must not wait for it
    stop = threading.Event()
    _stop_on_signals(stop)
    metrics = CollectMetrics(CollectorRegistry(), args.kind)
    if not args.output:  # publishing: to --bootstrap, else the configured cluster
        args.bootstrap = args.bootstrap or cfg.kafka.bootstrap_servers
    port = args.metrics_port
    if port is None and args.bootstrap:
        port = DEFAULT_METRICS_PORTS[args.kind]
    topic = args.topic or cfg.kafka.topics.samples
    one_shot = args.kind == "sipp" and not args.follow
    with ExitStack() as stack:   # last in, first out: the sink flushes before metrics stop being served
        if port is not None:
            stack.enter_context(serve_metrics(metrics.registry, cfg.metrics.host, port, log))
        sink: Sink
        if args.bootstrap:
            # a one-shot run has no outage to ride out: it refuses below, without a warning first
            sink = KafkaSink(args.bootstrap, topic, metrics, kafka=cfg.kafka,
                             max_pending=args.buffer or DEFAULT_MAX_PENDING, stop=stop, ride_out=not one_shot)
        else:
            sink = StreamSink(args.output, metrics)
        stack.callback(sink.close)
        if isinstance(sink, KafkaSink) and one_shot and not sink.up:
            # a one-shot run has no outage to ride out: say so now, as replay does (the rows stay in the files)
            raise ServiceError(f"cannot publish to {args.bootstrap}: {sink.down_why}; nothing published")
        if args.kind == "sipp":
            return _collect_sipp(args, sink, metrics, stop)
        return _collect_pcap(args, cfg, sink, metrics, stop)


def _collect_sipp(args: argparse.Namespace, sink: Any, metrics: Any, stop: threading.Event) -> int:
    from netsiam.collect.sipp import SippCollector
    from netsiam.collect.state import CollectState, default_state_path

    if args.state == "none" or (args.state is None and not args.bootstrap):
        state_path = None
    else:
        state_path = Path(args.state) if args.state else default_state_path("sipp", args.source)
    state = CollectState.load(state_path, args.source)
    if state_path is not None:
        log.info("state %s: resuming after ts %.6f", state_path, state.last_ts)
    c = SippCollector(args.files, args.source, sink, state, metrics, follow=args.follow, stop=stop)
    n = _run_notified(c, f"following {len(args.files)} file(s) of {args.source}")
    log.info("collect sipp: %d record(s) of %s handed over, %d pending", n, args.source, sink.pending)
    return 1 if sink.pending else 0


def _collect_pcap(args: argparse.Namespace, cfg: Config, sink: Any, metrics: Any, stop: threading.Event) -> int:
    from netsiam.collect.pcap import PcapCollector

    c = PcapCollector(args.interface, args.filter, sink, metrics, interval_s=cfg.window.interval_s,
                     write=args.write, stop=stop)
    n = _run_notified(c, f"capturing SIP on {args.interface}")
    log.info("collect pcap: %d record(s) handed over, %d pending", n, sink.pending)
    return 1 if sink.pending else 0


def _run_notified(collector: Any, status: str) -> int:
    """Run a collector under systemd's eye (Type=notify): ready once it runs, a watchdog ping every
    round of its loop (a loop stuck in a read or a publish stops them: systemd restarts it)."""
    from netsiam.sdnotify import Watchdog, notify

    collector.tick = Watchdog().ping
    notify("READY=1", f"STATUS={status}")
    try:
        return int(collector.run())
    finally:
        notify("STOPPING=1")


def cli_dump(args: argparse.Namespace, cfg: Config) -> int:
    from netsiam.collect.dump import dump

    dump(args.bootstrap or cfg.kafka.bootstrap_servers, args.topic or cfg.kafka.topics.samples, args.output,
         kafka=cfg.kafka,
         start=args.start, end=args.end, sources=args.source,
         faults_topic=args.faults_topic or cfg.kafka.topics.faults, labels=args.labels)
    return 0
