"""``netsiam <verb>``: argument parsing and dispatch. Each verb's work lives in its own module.

Errors a user can fix (bad input, missing file, mismatched artifact) end with a one-line message
and a non-zero exit, never a traceback; set NETSIAM_DEBUG=1 to see one for an internal error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from netsiam.collect.cli import add_parsers as add_collect_parsers
from netsiam.config import Config, load_config
from netsiam.errors import NetsiamError

__all__ = ["build_parser", "main"]

# verb -> "module:function"; functions take (args, cfg) and return an exit code
HANDLERS = {
    "simulate": "netsiam.trainer.simulate_cli:cli_simulate",
    "import": "netsiam.importers.cli:cli_import",
    "train": "netsiam.trainer.train:cli_train",
    "evaluate": "netsiam.trainer.evaluate:cli_evaluate",
    "prototypes": "netsiam.trainer.prototypes:cli_prototypes",
    "replay": "netsiam.replay:cli_replay",
    "detect": "netsiam.detector.cli:cli_detect",
    "broker": "netsiam.broker.embedded:cli_broker",
    "plot": "netsiam.trainer.plots:cli_plot",
    "collect": "netsiam.collect.cli:cli_collect",
    "dump": "netsiam.collect.cli:cli_dump",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="config.yaml (default: built-in defaults)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="netsiam", description="Streaming fault classifier for telecom signalling.")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("simulate", help="write a synthetic signalling trace + labels with injected faults")
    _common(p)
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faults", default=None,
                   help="comma-separated fault kinds to inject (default: blocked,capacity_limit)")
    p.add_argument("--min-load", type=float, default=None, help="lowest base offered load, calls/s")
    p.add_argument("--max-load", type=float, default=None, help="highest base offered load, calls/s")
    p.add_argument("-o", "--output", required=True, help="trace JSONL to write")
    p.add_argument("--labels", required=True, help="labels CSV to write")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("import", help="convert SIPp statistics or a SIP capture into records")
    isub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = isub.add_parser("sipp", help="SIPp -trace_stat CSV files")
    _common(q)
    q.add_argument("files", nargs="+")
    q.add_argument("--source", required=True)
    q.add_argument("-o", "--output", required=True)
    q = isub.add_parser("pcap", help="a SIP capture (pcap/pcapng), via tshark")
    _common(q)
    q.add_argument("file")
    q.add_argument("-o", "--output", required=True)

    p = sub.add_parser("train", help="trace(s) + labels -> model artifact")
    _common(p)
    p.add_argument("--data", action="append", required=True, help="trace JSONL (repeatable)")
    p.add_argument("--labels", action="append", required=True, help="labels CSV (repeatable)")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--loss", choices=["triplet", "lossless"], default=None)
    p.add_argument("--exclude-label", action="append", default=[],
                   help="leave this class out of training (to test novelty); repeatable")
    p.add_argument("--logdir", default=None, help="TensorBoard log directory (default: ARTIFACT/logs)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="artifact + trace + labels -> report")
    _common(p)
    p.add_argument("--model", default=None, help="artifact directory (default: the shipped model)")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--labels", action="append", required=True)
    p.add_argument("--json", dest="json_out", default=None, help="write the report as JSON here")
    p.add_argument("--plots", default=None, help="write PNG plots into this directory")
    p.add_argument("--novel", action="append", default=[],
                   help="label that the model never saw (report how often it is 'unknown'); repeatable")

    p = sub.add_parser("prototypes", help="add/list/remove classes without retraining")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = psub.add_parser("add", help="add (or replace) a class from a few labelled windows")
    _common(q)
    q.add_argument("--model", required=True)
    q.add_argument("--name", required=True)
    q.add_argument("--data", action="append", required=True)
    q.add_argument("--labels", action="append", required=True)
    q.add_argument("--label", default=None, help="label in the labels file to take (default: --name)")
    q.add_argument("--max-examples", type=int, default=None, help="use at most this many windows")
    q = psub.add_parser("list", help="list classes")
    _common(q)
    q.add_argument("--model", required=True)
    q = psub.add_parser("remove", help="remove a class")
    _common(q)
    q.add_argument("--model", required=True)
    q.add_argument("--name", required=True)

    p = sub.add_parser("replay", help="publish a trace to Kafka")
    _common(p)
    p.add_argument("trace")
    p.add_argument("--bootstrap", required=True, help="HOST:PORT")
    p.add_argument("--topic", default=None)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--speed", type=float, help="recorded pace x SPEED")
    g.add_argument("--max", action="store_true", help="as fast as possible")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("detect", help="run the daemon")
    _common(p)
    p.add_argument("--bootstrap", default=None, help="HOST:PORT (overrides kafka.bootstrap_servers)")
    p.add_argument("--model", default=None, help="artifact directory (overrides detector.model)")
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--group", default=None, help="consumer group (overrides kafka.group_id)")

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (foreground)")
    _common(p)
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--cert", default=None,
                   help="PEM certificate: serve TLS on --port (clients: kafka.security_protocol SSL, "
                        "ssl_cafile naming this certificate or its CA)")
    p.add_argument("--key", default=None, help="PEM private key of --cert (not needed if --cert holds it)")
    p.add_argument("--no-topics", action="store_true", help="do not create the configured topics")

    p = sub.add_parser("plot", help="embedding scatter / training animation / dashboard picture")
    _common(p)
    p.add_argument("what", nargs="?", default="embedding", choices=["embedding", "animate", "dashboard"])
    p.add_argument("--model", default=None)
    p.add_argument("--data", action="append", default=[])
    p.add_argument("--labels", action="append", default=[])
    p.add_argument("--animate", action="store_true", help="same as `plot animate`")
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", help="for `plot dashboard`")
    p.add_argument("--source", default=None, help="for `plot dashboard`: one source (default: all)")
    p.add_argument("--range", default="1h", help="for `plot dashboard`: time range, e.g. 15m, 1h")
    p.add_argument("-o", "--output", required=True)
    add_collect_parsers(sub, _common)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg: Config = load_config(args.config if getattr(args, "config", None) else None)
        module_name, func_name = HANDLERS[args.verb].split(":")
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args, cfg) or 0)
    except NetsiamError as e:
        print(f"netsiam {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, MemoryError) as e:
        print(f"netsiam {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line for users; NETSIAM_DEBUG=1 shows the traceback
        if os.environ.get("NETSIAM_DEBUG"):
            raise
        print(f"netsiam {args.verb}: internal error: {type(e).__name__}: {e} (NETSIAM_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
