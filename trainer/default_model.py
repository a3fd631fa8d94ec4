"""``make model``: regenerate the model shipped in the package, reproducibly.

Simulated training data (fixed seed, simulator defaults: every source its own testbed, with load,
call hold time and response time drawn over wide ranges) -> ``netsiam train`` with the config
defaults and :data:`TRAIN_OVERRIDES` (fixed training seed) -> ``netsiam/default_model/``. Many short sources rather than a few
long ones: the model must see many (load, hold, response) combinations, not many minutes of each.
TensorBoard logs and the checkpoint go to a temporary directory, not into the package.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from netsiam.config import Config, override
from netsiam.serving import default_model_path
from netsiam.traceio import write_labels, write_trace
from netsiam.trainer.simulate import SimParams, simulate
from netsiam.trainer.train import train

__all__ = ["TRAIN_MINUTES", "TRAIN_OVERRIDES", "TRAIN_PARAMS", "TRAIN_SEED", "TRAIN_SOURCES", "main",
           "training_config", "training_data"]

TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED = 32, 10.0, 1
TRAIN_PARAMS = SimParams()   # blocked + capacity_limit; retrans_storm stays out (the novel class)
# Synthetic outliers closer in than the config default ([3, 8] x a class's spread): the simulated
# classes already span hundreds of (load, hold, response) testbeds, so a shift of 2 spreads is
# outside anything a known class does, and the encoder learns to call milder new faults unknown.
# Measured (6 training seeds x 4 novel sets, H100): retrans_storm unknown 0.91 (worst 0.88) on the
# hardest set vs 0.83 (0.71), closed-set accuracy unchanged, and the real sipp_c `degraded` class
# unknown. NOT the config default: a model trained on ONE real recording sees one load, its spreads
# are narrow, and [2, 8] makes the other load's faults look novel (a->b accuracy 0.83, an episode
# missed, vs 0.99 and 24/24 with [3, 8]).
TRAIN_OVERRIDES: dict[str, object] = {"training.outlier_shift": (2.0, 8.0)}
SHIPPED = ("encoder.keras", "prototypes.json", "manifest.json", "history.json", "snapshots.npz")


def training_data(directory: str | Path) -> tuple[Path, Path]:
    """Write the default model's training trace and labels into ``directory``; -> (trace, labels)."""
    d = Path(directory)
    trace, labels = d / "train.jsonl", d / "train_labels.csv"
    records, intervals = simulate(TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED, TRAIN_PARAMS)
    write_trace(trace, records)
    write_labels(labels, intervals)
    return trace, labels


def training_config(base: Config | None = None) -> Config:
    """The config the default model is trained with: ``base`` (default: built-in defaults) + overrides."""
    return override(base or Config(), TRAIN_OVERRIDES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", default=str(default_model_path()))
    ap.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="netsiam-model-") as tmp:
        trace, labels = training_data(tmp)
        staging = Path(tmp) / "artifact"
        train(training_config(), [trace], [labels], staging, logdir=Path(tmp) / "logs", quiet=args.quiet)
        out = Path(args.output)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in SHIPPED:                       # logs and the checkpoint stay behind
            shutil.copy2(staging / name, out / name)
    print(f"default model written to {args.output} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
