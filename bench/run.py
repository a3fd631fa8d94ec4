"""``make bench``: every figure is a ratio to a baseline measured in the same run, same machine.

Writes bench/results.json (and bench/results.md, the table README shows) and prints a markdown
table. ``--quick`` runs each benchmark on small sizes (a smoke test in ``make test``; no thresholds
asserted there). The machine is shared, so absolute rates are noisy; baselines are measured next to
(interleaved with, where possible) what they are compared to, and the load average is recorded.

Benchmarks, in order (``--only NAME`` picks some):

* ``decode``: record decode + validate vs plain ``json.loads`` of the same bytes;
* ``train``: train the default model (``make model``'s recipe) in a fresh process; its artifact is
  the model every later benchmark serves (unless ``--model`` names one);
* ``embed``: the daemon's per-micro-batch embed function (the XLA-compiled encoder) vs a raw Keras
  ``predict_on_batch`` (bench/embed.py);
* ``e2e``: daemon throughput vs a bare consumer, two daemons vs one, record->event latency at half
  the daemon's maximum rate, on the embedded broker (bench/e2e.py);
* ``rss``: memory at 10, 1k and 10k sources (bench/rss.py);
* ``gpu``: ``KERAS_BACKEND=torch`` embed (the torch fast path) vs raw ``torch.nn.LSTM`` on a CUDA GPU
  (bench/gpu.py), ``gpu_embed_ratio`` null where there is no GPU; and on the CPU the same fast path vs
  Keras ``predict_on_batch`` under torch (bench/torch_cpu.py, ``torch_cpu_embed_ratio``);
* ``produce``: ``replay`` with ``kafka.client: confluent-kafka`` vs kafka-python on the embedded
  broker (bench/produce.py); not in ``--quick``, null ratio without confluent-kafka.
* ``sources``: ``max_sources_1hz``, the most sources one daemon holds at one record per second
  each, a decision per source per second, lag bounded, searched on the embedded broker with a paced
  producer in its own process (bench/sources.py); an absolute figure (no baseline), with the load
  average; not in ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Ctx, child_env, machine_info, rate, run_json, trace_lines

__all__ = ["BENCHES", "TARGETS", "bench_decode", "main"]

HERE = Path(__file__).resolve().parent

# key -> (comparison, target): the targets, shown next to the figures (never asserted in tests)
TARGETS: dict[str, tuple[str, float]] = {
    "embed_ratio": (">=", 1.2),
    "e2e_ratio": (">=", 0.8),
    "p99_latency_ms": ("<=", 250.0),
    "train_seconds": ("<=", 180.0),
    "rss_kib_per_source_beyond_window": ("<=", 10.0),
    "gpu_embed_ratio": (">=", 0.7),
    "bench_seconds": ("<=", 600.0),
    "max_sources_1hz": (">=", 20000),
}

_rate = rate  # the original name, kept for callers of this module


def sample_lines(n_sources: int, minutes: float) -> list[bytes]:
    return trace_lines(n_sources, minutes, seed=123)


def bench_decode(ctx: Ctx) -> dict[str, Any]:
    """Record decode + validate (daemon hot path) vs plain json.loads of the same bytes."""
    import orjson  # noqa: F401 - decode_record's parser; imported first so it is not timed

    from netsiam.features import RAW_METRICS
    from netsiam.schemas.record import decode_record

    quick = ctx.quick
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


def bench_train(ctx: Ctx) -> dict[str, Any]:
    """Seconds to train the default model (fresh process), accuracy on another seed."""
    out_dir = ctx.tmp / "model"
    args = ["-o", str(out_dir)] + (["--epochs", "1", "--steps", "5", "--eval-minutes", "10"] if ctx.quick else [])
    res = run_json("bench.train", args, timeout_s=900)
    if ctx.model is None:
        ctx.model = out_dir
    return res


def _ensure_model(ctx: Ctx) -> Path:
    """The artifact to serve: ``--model``, else this run's trained one, else the shipped default model,
    else a quickly trained one (when ``train`` was not selected)."""
    if ctx.model is None:
        from netsiam.serving import default_model_path

        shipped = default_model_path()
        if (shipped / "manifest.json").is_file():
            ctx.model = shipped
        else:
            out_dir = ctx.tmp / "quick-model"
            run_json("bench.train", ["-o", str(out_dir), "--epochs", "1", "--steps", "5", "--eval-minutes", "5"],
                     timeout_s=600)
            ctx.model = out_dir
    return ctx.model


def bench_embed(ctx: Ctx) -> dict[str, Any]:
    from bench.embed import bench_embed as run

    _ensure_model(ctx)
    return run(ctx)


def bench_e2e(ctx: Ctx) -> dict[str, Any]:
    from bench.e2e import bench_e2e as run

    _ensure_model(ctx)
    return run(ctx)


def bench_rss(ctx: Ctx) -> dict[str, Any]:
    sizes = "10,100,1000" if ctx.quick else "10,1000,10000"
    return run_json("bench.rss", ["--model", str(_ensure_model(ctx)), "--sizes", sizes], timeout_s=600)


def bench_gpu(ctx: Ctx) -> dict[str, Any]:
    """Fresh processes under KERAS_BACKEND=torch: the GPU figure (null, with the reason, without CUDA)
    and the torch fast path on the CPU against Keras under the same backend."""
    args = ["--model", str(_ensure_model(ctx))] + (["--quick"] if ctx.quick else [])
    out: dict[str, Any] = {}
    for module, key in (("bench.gpu", "gpu"), ("bench.torch_cpu", "torch_cpu")):
        try:
            out |= run_json(module, args, timeout_s=600, env=child_env(KERAS_BACKEND="torch"))
        except RuntimeError as e:
            out |= {f"{key}_embed_ratio": None, f"{key}_note": f"{module} failed: {str(e)[-300:]}"}
    return out


def bench_produce(ctx: Ctx) -> dict[str, Any]:
    from bench.produce import bench_produce as run

    return run(ctx)


def bench_sources(ctx: Ctx) -> dict[str, Any]:
    from bench.sources import bench_sources as run

    if ctx.quick:
        return {}  # not in the smoke test: the daemon's start alone takes longer than its share
    _ensure_model(ctx)
    return run(ctx)


BENCHES: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "decode": bench_decode,
    "train": bench_train,
    "embed": bench_embed,
    "e2e": bench_e2e,
    "rss": bench_rss,
    "gpu": bench_gpu,
    "produce": bench_produce,
    "sources": bench_sources,
}


def _cell(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return "null" if v is None else str(v)


def _verdict(key: str, v: Any) -> str:
    if key not in TARGETS:
        return ""
    op, target = TARGETS[key]
    if not isinstance(v, int | float):
        return f"{op} {target:g}: n/a"
    ok = v >= target if op == ">=" else v <= target
    return f"{op} {target:g}: {'ok' if ok else 'MISSED'}"


def _table(results: dict[str, Any]) -> str:
    rows = ["| key | value | target |", "|---|---|---|"]
    for k, v in results.items():
        if k == "machine" or (isinstance(v, dict) and any(isinstance(x, dict) for x in v.values())):
            continue  # nested detail: results.json only
        rows.append(f"| `{k}` | {_cell(v)} | {_verdict(k, v)} |")
    m = results.get("machine", {})
    rows.append(f"\n{m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, load average {m.get('loadavg_start', '?')} "
                f"at start and {m.get('loadavg_end', '?')} at the end (a shared machine: ratios, not absolutes).")
    return "\n".join(rows)


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--only", action="append", default=[], choices=sorted(BENCHES))
    ap.add_argument("--model", default=None, help="artifact to serve in embed/e2e/rss/gpu/sources (default: the "
                                                  "one the train benchmark writes)")
    ap.add_argument("-o", "--output", default=None, help="results JSON (default bench/results.json)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    ctx = Ctx(quick=args.quick, model=Path(args.model) if args.model else None)
    results: dict[str, Any] = {"machine": {**machine_info(), "loadavg_start": _loadavg(), "quick": args.quick}}
    failed = []
    try:
        for name, fn in BENCHES.items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            try:
                results.update(fn(ctx))
            except Exception as e:  # noqa: BLE001 - one benchmark failing must not lose the others' figures
                failed.append(name)
                results[f"{name}_error"] = f"{type(e).__name__}: {str(e)[-500:]}"
                traceback.print_exc()
            print(f"bench {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    results["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    results["machine"]["loadavg_end"] = _loadavg()
    results["machine"]["model"] = str(ctx.model) if ctx.model and not str(ctx.model).startswith(str(ctx.tmp)) \
        else "trained in this run"
    out = Path(args.output) if args.output else HERE / ("results-quick.json" if args.quick else "results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    table = _table(results)
    if not args.quick and not args.output:
        (HERE / "results.md").write_text(table + "\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
