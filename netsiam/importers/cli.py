"""``netsiam import sipp|pcap``: convert recordings into records (JSON Lines)."""

from __future__ import annotations

import argparse
import sys

from netsiam.config import Config
from netsiam.errors import UsageError
from netsiam.traceio import STDIO, write_trace

__all__ = ["cli_import"]


def cli_import(args: argparse.Namespace, cfg: Config) -> int:
    if args.kind == "sipp":
        from netsiam.importers.sipp import import_sipp

        if args.files.count(STDIO) > 1:
            raise UsageError("- (standard input) is given more than once: it can be read once")

        records = import_sipp(args.files, args.source)
    else:
        from netsiam.importers.pcap import import_pcap

        records = import_pcap(args.file, interval_s=cfg.window.interval_s)
    n = write_trace(args.output, records)
    sources = sorted({r.source for r in records})
    print(f"import {args.kind}: {n} records from {len(sources)} source(s) ({', '.join(sources[:5])}) "
          f"-> {args.output}", file=sys.stderr)
    return 0
