"""The ``netsiam`` command line: every verb's arguments, each with its help and its default shown.

Parsing only; :mod:`netsiam.cli` runs the verbs. The invocations in docs/cli.md are contracts.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from netsiam.argtypes import bootstrap, http_url, port, positive, positive_finite, seed, source
from netsiam.collect.cli import add_parsers as add_collect_parsers

__all__ = ["HelpFormatter", "build_parser", "iter_parsers", "version"]

EPILOG = """\
configuration: --config FILE, else $NETSIAM_CONFIG, else /etc/netsiam/config.yaml, else the built-in
defaults; NETSIAM_<SECTION>__<KEY>=VALUE overrides one key (NETSIAM_KAFKA__SASL_PASSWORD, or
NETSIAM_KAFKA__SASL_PASSWORD_FILE=PATH to read it from a file).
files: - reads standard input or writes standard output.
exit status: 0 done, 1 runtime failure (broker, service, internal), 2 usage, 3 input data,
4 configuration, 130 interrupted. NETSIAM_DEBUG=1 shows a traceback for an internal error."""


def version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("netsiam")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to every option with a default worth stating (not None, False or [])
    whose help does not state it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or (isinstance(default, list | str) and not default) or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="config.yaml (default: $NETSIAM_CONFIG, else /etc/netsiam/config.yaml if present, "
                        "else the built-in defaults)")


def _formatted(parser: argparse.ArgumentParser) -> None:
    """Every parser and sub-parser uses :class:`HelpFormatter` (add_parser does not inherit it)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _formatted(sub)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="netsiam", description="Streaming fault classifier for telecom signalling.",
                                 epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"netsiam {version()}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("simulate", help="write a synthetic signalling trace + labels with injected faults")
    _common(p)
    p.add_argument("--sources", type=positive, default=8, help="monitored elements to simulate")
    p.add_argument("--minutes", type=positive_finite, default=30.0, help="length of the trace")
    p.add_argument("--seed", type=seed, default=0, help="random seed (same seed, same trace)")
    p.add_argument("--faults", default=None,
                   help="comma-separated fault kinds to inject (default: blocked,capacity_limit)")
    p.add_argument("--min-load", type=positive_finite, default=None, help="lowest base offered load, calls/s "
                   "(default: the simulator's)")
    p.add_argument("--max-load", type=positive_finite, default=None, help="highest base offered load, calls/s "
                   "(default: the simulator's)")
    p.add_argument("-o", "--output", required=True, help="trace JSONL to write; - = stdout")
    p.add_argument("--labels", required=True, help="labels CSV to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    p = sub.add_parser("import", help="convert SIPp statistics or a SIP capture into records")
    isub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = isub.add_parser("sipp", help="SIPp -trace_stat CSV files")
    _common(q)
    q.add_argument("files", nargs="+", help="statistics files of one source (.gz allowed; - = stdin)")
    q.add_argument("--source", type=source, required=True, help="source name of the records")
    q.add_argument("-o", "--output", required=True, help="trace JSONL to write; - = stdout")
    q = isub.add_parser("pcap", help="a SIP capture (pcap/pcapng), via tshark")
    _common(q)
    q.add_argument("file", help="capture file (- = stdin)")
    q.add_argument("-o", "--output", required=True, help="trace JSONL to write; - = stdout")

    p = sub.add_parser("train", help="trace(s) + labels -> model artifact")
    _common(p)
    p.add_argument("--data", action="append", required=True, help="trace JSONL (repeatable; one may be -)")
    p.add_argument("--labels", action="append", required=True, help="labels CSV (repeatable)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--epochs", type=positive, default=None, help="at most this many epochs (default: training.epochs)")
    p.add_argument("--seed", type=seed, default=None, help="training seed (default: training.seed)")
    p.add_argument("--loss", choices=["triplet", "lossless"], default=None, help="loss (default: training.loss)")
    p.add_argument("--candidates", type=positive, default=None,
                   help="train seeds SEED..SEED+N-1 (side by side, one per core), keep the one the input-shift probe scores highest "
                        "(default: training.candidates)")
    p.add_argument("--exclude-label", action="append", default=[],
                   help="leave this class out of training (to test novelty); repeatable")
    p.add_argument("--logdir", default=None, help="TensorBoard log directory (default: ARTIFACT/logs; with candidates, "
                   "a seed-S folder per candidate in it, default ARTIFACT/candidates/seed-S/logs)")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("evaluate", help="artifact + trace + labels -> report")
    _common(p)
    p.add_argument("--model", default=None, help="artifact directory (default: the shipped model)")
    p.add_argument("--data", action="append", required=True, help="trace JSONL (repeatable; one may be -)")
    p.add_argument("--labels", action="append", required=True, help="labels CSV (repeatable)")
    p.add_argument("--json", dest="json_out", default=None,
                   help="write the report as JSON here; - = stdout (the summary then goes to stderr)")
    p.add_argument("--plots", default=None, help="write PNG plots into this directory")
    p.add_argument("--novel", action="append", default=[],
                   help="label that the model never saw (report how often it is 'unknown'); repeatable")

    # the shipped model is package data: `model copy DIR` makes one to change (netsiam/versions.py)
    changed_model = ("artifact directory to change in place (default: detector.model; not the shipped model: "
                     "`netsiam model copy DIR` first)")
    p = sub.add_parser("prototypes", help="add/list/remove classes without retraining")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = psub.add_parser("add", help="add (or replace) a class from a few labelled windows")
    _common(q)
    q.add_argument("--model", default=None, help=changed_model)
    q.add_argument("--name", required=True, help="class name")
    q.add_argument("--data", action="append", required=True, help="trace JSONL (repeatable; one may be -)")
    q.add_argument("--labels", action="append", required=True, help="labels CSV (repeatable)")
    q.add_argument("--label", default=None, help="label in the labels file to take (default: --name)")
    q.add_argument("--max-examples", type=positive, default=None, help="use at most this many windows (default: all)")
    q = psub.add_parser("list", help="list classes")
    _common(q)
    q.add_argument("--model", default=None, help="artifact directory (default: detector.model, else the shipped model)")
    q = psub.add_parser("remove", help="remove a class")
    _common(q)
    q.add_argument("--model", default=None, help=changed_model)
    q.add_argument("--name", required=True, help="class name")

    p = sub.add_parser("feedback", help="relabel a raised event: the served model learns from its episode")
    _common(p)
    p.add_argument("event_id", metavar="EVENT_ID", help="event_id of the episode's raised (or cleared) event")
    p.add_argument("--label", required=True, help="normal (a false alarm), a known class, or a new class name")
    p.add_argument("--bootstrap", type=bootstrap, default=None,
                   help="HOST:PORT to read the event and the samples from (default: kafka.bootstrap_servers, "
                        "unless --data is given)")
    p.add_argument("--model", default=None, help="artifact directory the daemon serves from (default: detector.model)")
    p.add_argument("--data", default=None, help="trace JSONL holding the episode's samples (instead of the samples topic)")
    p.add_argument("--by", default=os.environ.get("USER", ""), help="who says so (kept in the model's lineage; "
                   "default: $USER)")
    p.add_argument("--note", default="", help="free text kept in the model's lineage")

    p = sub.add_parser("learn", help="apply feedback messages from Kafka to the served model (a service)")
    _common(p)
    p.add_argument("--bootstrap", type=bootstrap, default=None, help="HOST:PORT (default: kafka.bootstrap_servers)")
    p.add_argument("--model", default=None, help="artifact directory the daemon serves from (default: detector.model)")
    p.add_argument("--group", default=None, help="consumer group (default: kafka.group_id + '-learn')")
    p.add_argument("--metrics-port", type=port, default=None,
                   help="serve /metrics on this port (bound to metrics.host; 0 = any free port; default: none)")

    p = sub.add_parser("model", help="versions of a served model: history, rollback, copy")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = msub.add_parser("history", help="list the versions kept (feedback lineage), * = served")
    _common(q)
    q.add_argument("--model", default=None, help="artifact directory (default: detector.model, else the shipped model)")
    q.add_argument("--json", action="store_true", help="JSON on stdout")
    q = msub.add_parser("rollback", help="serve a kept version again")
    _common(q)
    q.add_argument("version", metavar="VERSION", help="a version from `model history` (or an event's model_version)")
    q.add_argument("--model", default=None, help="artifact directory (default: detector.model)")
    q.add_argument("--by", default=os.environ.get("USER", ""), help="who rolls back (logged; default: $USER)")
    q = msub.add_parser("copy", help="copy a model (default: the shipped one) into a directory to serve and teach")
    _common(q)
    q.add_argument("directory", metavar="DIR", help="new artifact directory")
    q.add_argument("--model", default=None, help="artifact to copy (default: the shipped model)")

    p = sub.add_parser("replay", help="publish a trace to Kafka")
    _common(p)
    p.add_argument("trace", help="trace JSONL (- = stdin)")
    p.add_argument("--bootstrap", type=bootstrap, default=None, help="HOST:PORT (default: kafka.bootstrap_servers)")
    p.add_argument("--topic", default=None, help="topic (default: kafka.topics.samples)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--speed", type=positive_finite, help="recorded pace x SPEED")
    g.add_argument("--max", action="store_true", help="as fast as possible")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("detect", help="run the daemon")
    _common(p)
    p.add_argument("--bootstrap", type=bootstrap, default=None, help="HOST:PORT (default: kafka.bootstrap_servers)")
    p.add_argument("--model", default=None, help="artifact directory (default: detector.model, else the shipped model)")
    p.add_argument("--metrics-port", type=port, default=None, help="/metrics and /healthz port (default: metrics.port)")
    p.add_argument("--group", default=None, help="consumer group (default: kafka.group_id)")

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (foreground)",
                       description="Tansu, storage in memory: it keeps every record until it stops (no retention; "
                                   "about 60 MiB per million records) and slows as its log grows. For a test session "
                                   "or a demo; run a Kafka cluster with retention for anything longer.")
    _common(p)
    p.add_argument("--port", type=port, default=9092, help="port to serve Kafka on")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--cert", default=None,
                   help="PEM certificate: serve TLS on --port (clients: kafka.security_protocol SSL, "
                        "ssl_cafile naming this certificate or its CA)")
    p.add_argument("--key", default=None, help="PEM private key of --cert (not needed if --cert holds it)")
    p.add_argument("--no-topics", action="store_true", help="do not create the configured topics")

    p = sub.add_parser("plot", help="embedding scatter / training animation / dashboard picture")
    _common(p)
    p.add_argument("what", nargs="?", default="embedding", choices=["embedding", "animate", "dashboard"],
                   help="what to draw (default: embedding)")
    p.add_argument("--model", default=None, help="artifact directory (default: the shipped model)")
    p.add_argument("--data", action="append", default=[], help="trace JSONL for `plot embedding` (repeatable)")
    p.add_argument("--labels", action="append", default=[], help="labels CSV for `plot embedding` (repeatable)")
    p.add_argument("--animate", action="store_true", help="same as `plot animate`")
    # defaults None, said in the help: a flag given for another kind of plot is a usage error (trainer/plots.py)
    p.add_argument("--prometheus", type=http_url, default=None,
                   help="for `plot dashboard`: Prometheus URL (default: http://127.0.0.1:9090)")
    p.add_argument("--source", default=None, help="for `plot dashboard`: one source (default: all)")
    p.add_argument("--range", default=None, help="for `plot dashboard`: time range, e.g. 15m, 1h (default: 1h)")
    p.add_argument("-o", "--output", required=True, help="image (PNG, or GIF for animate) to write")
    add_collect_parsers(sub, _common)
    _formatted(ap)
    return ap


def iter_parsers(parser: argparse.ArgumentParser, prefix: str = "netsiam") -> Any:
    """(command, parser) for the parser and every sub-parser (tests check each flag's help)."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from iter_parsers(sub, f"{prefix} {name}")
