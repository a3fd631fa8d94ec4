"""``python -m netsiam.dashboard grafana -o FILE`` writes the Grafana JSON, ``png -o FILE`` the picture."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from netsiam.argtypes import http_url
from netsiam.errors import NetsiamError

from .grafana import grafana_json
from .picture import DEFAULT_PROMETHEUS, cli_plot_dashboard

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netsiam.dashboard")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grafana", help="write the Grafana dashboard JSON")
    g.add_argument("-o", "--output", default="-")
    r = sub.add_parser("png", help="render the dashboard from a Prometheus to a PNG")
    r.add_argument("--prometheus", type=http_url, default=DEFAULT_PROMETHEUS)
    r.add_argument("--source", default=None)
    r.add_argument("--instance", default=None)
    r.add_argument("--range", default="1h")
    r.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "grafana":
        text = grafana_json()
        if args.output == "-":
            sys.stdout.write(text)
        else:
            Path(args.output).write_text(text)
        return 0
    try:
        return cli_plot_dashboard(args)
    except (NetsiamError, ValueError) as e:
        print(f"dashboard: error: {e}", file=sys.stderr)
        return 2

