"""``make bench``: every figure is a ratio to a baseline measured in the same run, same machine.

Writes bench/results.json and prints a markdown table. ``--quick`` runs each benchmark on small
sizes (a smoke test in ``make test``; no thresholds asserted there).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from netsiam.features import RAW_METRICS
from netsiam.schemas.record import decode_record

__all__ = ["bench_decode", "main"]

HERE = Path(__file__).resolve().parent


def _rate(fn: Callable[[], int], min_seconds: float) -> float:
    """Items per second of ``fn`` (returns items done), best of repeated runs over ``min_seconds``."""
    best = 0.0
    deadline = time.perf_counter() + min_seconds
    while True:
        t0 = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
        if time.perf_counter() > deadline:
            return best


def sample_lines(n_sources: int, minutes: float) -> list[bytes]:
    from netsiam.trainer.simulate import simulate

    records, _ = simulate(n_sources, minutes, seed=123)
    return [orjson.dumps(r.to_json()) for r in records]


def bench_decode(quick: bool) -> dict[str, Any]:
    """Record decode + validate (daemon hot path) vs plain json.loads of the same bytes."""
    lines = sample_lines(4, 2 if quick else 20)
    required = frozenset(RAW_METRICS)
    secs = 0.3 if quick else 2.0

    def plain() -> int:
        for raw in lines:
            json.loads(raw)
        return len(lines)

    def ours() -> int:
        for raw in lines:
            decode_record(raw, RAW_METRICS, required)
        return len(lines)

    base, mine = _rate(plain, secs), _rate(ours, secs)
    out: dict[str, Any] = {"decode_records_per_s": round(mine), "json_loads_records_per_s": round(base),
                           "decode_ratio": round(mine / base, 3)}
    try:
        import jsonschema

        from netsiam.schemas import load_schema

        validator = jsonschema.Draft202012Validator(load_schema("record"))
        sub = lines[: max(200, len(lines) // 20)]

        def schema() -> int:
            for raw in sub:
                validator.is_valid(json.loads(raw))
            return len(sub)

        out["jsonschema_ratio"] = round(_rate(schema, secs) / base, 3)
    except ImportError:
        pass
    return out


BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {"decode": bench_decode}


def _table(results: dict[str, Any]) -> str:
    rows = ["| key | value |", "|---|---|"]
    rows += [f"| `{k}` | {v} |" for k, v in results.items() if k != "machine"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--only", action="append", default=[], choices=sorted(BENCHES))
    ap.add_argument("-o", "--output", default=None, help="results JSON (default bench/results.json)")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                           "quick": args.quick}}
    for name, fn in BENCHES.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        results.update(fn(args.quick))
        print(f"bench {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    out = Path(args.output) if args.output else HERE / ("results-quick.json" if args.quick else "results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
