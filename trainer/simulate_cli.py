"""``netsiam simulate``: write a seeded synthetic trace and its labels."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from netsiam.config import Config
from netsiam.errors import UsageError
from netsiam.traceio import write_labels, write_trace
from netsiam.trainer.simulate import SimParams, simulate

__all__ = ["cli_simulate"]


def cli_simulate(args: argparse.Namespace, cfg: Config) -> int:
    same = os.path.abspath(args.output) == os.path.abspath(args.labels)
    if args.output == args.labels == "-":
        raise UsageError("-o and --labels are both stdout: the labels would follow the trace in one stream")
    if same and args.output != "-" and (not os.path.exists(args.output) or os.path.isfile(args.output)):
        raise UsageError(f"-o and --labels name the same file: {args.output}")
    params = SimParams()
    changes: dict[str, object] = {}
    if args.faults:
        changes["faults"] = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    if args.min_load is not None or args.max_load is not None:
        lo = args.min_load if args.min_load is not None else params.load_range[0]
        hi = args.max_load if args.max_load is not None else params.load_range[1]
        if lo > hi:
            raise UsageError(f"--min-load {lo:g} is above --max-load {hi:g}"
                             + ("" if args.max_load is not None else " (its default)"))
        changes["load_range"] = (lo, hi)
    params = dataclasses.replace(params, **changes)
    records, labels = simulate(args.sources, args.minutes, args.seed, params, progress=not args.quiet)
    n = write_trace(args.output, records)
    m = write_labels(args.labels, labels)
    if not args.quiet:
        print(f"simulate: {n} records from {args.sources} sources, {m} fault episodes -> "
              f"{args.output}, {args.labels}", file=sys.stderr)
    return 0
