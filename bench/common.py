"""Helpers shared by the benchmarks: timing on a noisy shared machine, simulated data, subprocess JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["REPO", "Ctx", "best_rates", "child_env", "machine_info", "new_topics", "rate", "run_json", "trace_lines",
           "unique_name", "wall_and_cpu_rates"]

REPO = Path(__file__).resolve().parent.parent


# The vector units TensorFlow's CPU kernels pick from: the same code and seed train different weights,
# and embed at different rates, on machines that differ here, so every result names them.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def machine_info() -> dict[str, Any]:
    """Platform, Python, CPU count, the CPU's name and which of ``_ISA_FLAGS`` it has (Linux)."""
    cpu: dict[str, Any] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and "name" not in cpu:
            cpu["name"] = val.strip()
        elif key == "flags" and "isa" not in cpu:
            have = set(val.split())
            cpu["isa"] = [f for f in _ISA_FLAGS if f in have]
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": cpu.get("name", platform.processor() or "unknown"), "cpu_isa": cpu.get("isa", [])}


def unique_name(prefix: str) -> str:
    """``bench-PREFIX-xxxxxxxx``: a topic or group no earlier run used."""
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def new_topics(bootstrap: str, tag: str, partitions: int) -> Any:
    """A fresh set of topics for one benchmark run (unique names ``bench-TAG-xxxxxxxx.*``), created."""
    from netsiam.broker import create_topics
    from netsiam.config import TopicsConfig

    name = unique_name(tag)
    topics = TopicsConfig(samples=f"{name}.samples", faults=f"{name}.faults", deadletter=f"{name}.dl",
                          samples_partitions=partitions)
    create_topics(bootstrap, topics)
    return topics


@dataclass
class Ctx:
    """What one ``bench.run`` invocation shares between benchmarks."""

    quick: bool
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="netsiam-bench-")))
    model: Path | None = None                       # artifact the embed/e2e benchmarks serve
    results: dict[str, Any] = field(default_factory=dict)


def rate(fn: Callable[[], int], min_seconds: float) -> float:
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


def best_rates(fns: Sequence[Callable[[], int]], min_seconds: float, min_rounds: int = 3) -> list[float]:
    """Like :func:`rate` for several functions, interleaved round by round (A, B, A, B, ...) so a
    neighbour's load on the shared cores hits every contender alike; best items/s of each."""
    return wall_and_cpu_rates(fns, min_seconds, min_rounds)[0]


def wall_and_cpu_rates(fns: Sequence[Callable[[], int]], min_seconds: float, min_rounds: int = 3
                       ) -> tuple[list[float], list[float]]:
    """:func:`best_rates`, plus the best items per CPU second of this process (all its threads) of
    each: less sensitive to other processes on the machine than wall time (their load delays a
    round but does not add CPU time to it)."""
    wall, cpu = [0.0] * len(fns), [0.0] * len(fns)
    deadline = time.perf_counter() + min_seconds
    rounds = 0
    while rounds < min_rounds or time.perf_counter() < deadline:
        for i, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            wall[i] = max(wall[i], n / dt)
            cpu[i] = max(cpu[i], n / max(dc, 1e-9))
        rounds += 1
    return wall, cpu


def trace_lines(n_sources: int, minutes: float, seed: int = 123, copies: int = 1) -> list[bytes]:
    """Simulated records as JSON lines, in time order. ``copies`` > 1 repeats the simulated sources
    under new names (``sbc-3~2``): many sources for the price of a few simulated ones."""
    from netsiam.trainer.simulate import simulate

    records, _ = simulate(n_sources, minutes, seed=seed)
    out = []
    for r in records:  # simulate() yields time order (ts, then source)
        obj = r.to_json()
        out.append(orjson.dumps(obj))
        for c in range(1, copies):
            out.append(orjson.dumps({**obj, "source": f"{obj['source']}~{c}"}))
    return out


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def run_json(module: str, args: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh process; its last stdout line is a JSON object."""
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env or child_env(), text=True,
                       capture_output=True, timeout=timeout_s)
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed ({p.returncode}): {(p.stderr or p.stdout)[-2000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out

