"""``make model``: regenerate the model shipped in the package, reproducibly.

Simulated training data (fixed seed, simulator defaults) -> ``netsiam train`` with the config
defaults (fixed training seed) -> ``netsiam/default_model/``. TensorBoard logs go to a temporary
directory, not into the package.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from netsiam.config import Config
from netsiam.traceio import write_labels, write_trace
from netsiam.trainer.artifact import default_model_path
from netsiam.trainer.simulate import simulate
from netsiam.trainer.train import train

__all__ = ["TRAIN_MINUTES", "TRAIN_SEED", "TRAIN_SOURCES", "main"]

TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED = 8, 40.0, 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", default=str(default_model_path()))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="netsiam-model-") as tmp:
        trace, labels = Path(tmp) / "train.jsonl", Path(tmp) / "train_labels.csv"
        records, intervals = simulate(TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED)
        write_trace(trace, records)
        write_labels(labels, intervals)
        staging = Path(tmp) / "artifact"
        train(Config(), [trace], [labels], staging, logdir=Path(tmp) / "logs")
        out = Path(args.output)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staging, out, ignore=shutil.ignore_patterns("logs", "checkpoint*"))
    print(f"default model written to {args.output} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
