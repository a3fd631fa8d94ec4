"""``make model``: regenerate the model shipped in the package, reproducibly.

Training data: every recording of the real-SIPp corpus (``deploy/testbed/corpus``: real SIPp quirks,
5-200 calls/s, holds of 1-60 s, the fault shapes a testbed shows) but the novel and ``unseen_`` ones,
plus a simulation (fixed seed, :data:`netsiam.trainer.simulate.VARIED`: many short sources, each its own
testbed, so the model sees loads and holds no recording has). ``degraded`` episodes are left out: that class
is the one the shipped model must call ``unknown``. Then ``netsiam train`` with the config defaults
and a fixed seed -> ``netsiam/default_model/``. TensorBoard logs and the checkpoint go to a temporary
directory, not into the package.

``--ranges-only`` rewrites only the manifest's ``normal_ranges``, ``fault_signatures`` and ``fault_marks`` (the
evidence fault events quote and what the debounce reads of the counters, :mod:`netsiam.evidence`) from the same training
windows, as :func:`~netsiam.trainer.train.train` computes them: the shipped model gets them without
retraining (which would change every published figure). Training writes them itself, so ``make model``
needs no extra step.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import orjson

from netsiam import quiet
from netsiam.config import Config, override
from netsiam.errors import NetsiamError
from netsiam.evidence import MANIFEST_KEY
from netsiam.serving import MANIFEST_FILE, default_model_path
from netsiam.traceio import atomic_write_bytes, write_labels, write_trace
from netsiam.trainer.corpus import NOVEL_LABEL, load_corpus, to_traces
from netsiam.trainer.simulate import VARIED, simulate
from netsiam.trainer.train import train, training_evidence

__all__ = ["EXCLUDED_LABELS", "MODEL_SEED", "TRAIN_MINUTES", "TRAIN_OVERRIDES", "TRAIN_PARAMS", "TRAIN_SEED", "TRAIN_SOURCES",
           "main", "training_config", "training_data", "write_ranges"]

TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED = 32, 10.0, 1     # the simulation's seed
# The training seed. The shipped model used to train with a seed picked by hand on validation (seed 2 of
# 1-5, `python -m bench.seeds`: how often each called a simulated never-seen fault unknown); now the
# recipe trains three candidates and keeps the one the input-shift probe scores highest
# (training.candidates, below), so the seed is the config default's.
MODEL_SEED = 0
TRAIN_PARAMS = VARIED       # blocked + capacity_limit in their real variants; retrans_storm stays out (novel)
EXCLUDED_LABELS = (NOVEL_LABEL,)
# Synthetic outliers closer in than the config default ([3, 8] x a class's spread): the corpus and the
# simulation already span many testbeds, so 2 spreads is outside anything a known class does and the
# encoder learns to call milder new faults unknown. Chosen on validation only (held out: the val_*
# recordings for the known faults, a simulated retrans_storm for novelty; two training seeds): storm
# windows unknown 0.97 / 0.89 against 0.76 / 0.10, the val_* faults unchanged (14/14 first raises right).
# Not the config default: trained on ONE recording (one load, narrow spreads) it makes another
# recording's faults look novel.
# A class threshold floor of 0.6, not 0.7: a fault made of slow answers lands 0.67-0.70 from normal (the
# unit cube leaves no room further out on normal's side), inside a 0.7 floor. Chosen on validation only
# (the five val_* recordings held out in turn, and a simulated slow_answers class): slow-answer windows
# unknown 0.01-0.89 over the five models against 0.00-0.10, with every val_* first raise right, each
# episode raised once, delays unchanged and no false raise (with detector.debounce.aftermath_s 35).
# Not the config default, for the reason above: one recording's narrow spreads need the wider floor.
# Three candidates, the one that calls normal validation windows with one input shifted `unknown` most
# kept (netsiam.trainer.probe): the same recipe called a never-seen fault unknown in 0.00 or 0.94 of its
# windows depending on the seed. Chosen on validation only: over the six val_* recordings held out in
# turn, ten models each (two seeds of this recipe and four variants), the probe's rank matched the
# simulated never-seen fault's unknown share with Spearman 0.66 / 0.88 / 0.85 / 0.82 / 0.52 / -0.06, and
# the highest-probe model read it unknown in 0.92-0.94 of windows on every fold (0.00-0.94 over seed 0's).
# Not the config default: three trainings instead of one (side by side, one per core: trainer.workers).
TRAIN_OVERRIDES: dict[str, object] = {"training.outlier_shift": (2.0, 8.0), "prototypes.min_threshold": 0.6,
                                      "training.candidates": 3}
SHIPPED = ("encoder.keras", "prototypes.json", "manifest.json", "history.json", "snapshots.npz")


def training_data(directory: str | Path) -> tuple[list[Path], list[Path]]:
    """Write the default model's training traces and labels into ``directory``; -> (traces, labels)."""
    d = Path(directory)
    trace, labels = d / "sim.jsonl", d / "sim_labels.csv"
    records, intervals = simulate(TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED, TRAIN_PARAMS)
    write_trace(trace, records)
    write_labels(labels, intervals)
    real = to_traces([r for r in load_corpus() if r.trained_on and r.role != "novel"], d / "corpus")
    return [trace, *(t for t, _ in real.values())], [labels, *(lab for _, lab in real.values())]


def training_config(base: Config | None = None) -> Config:
    """The config the default model is trained with: ``base`` (default: built-in defaults) + overrides."""
    return override(base or Config(), TRAIN_OVERRIDES)


def write_ranges(model_dir: str | Path) -> dict[str, object]:
    """Recompute the default model's normal ranges, fault signatures and marks from its training windows and write
    them into ``model_dir``'s manifest (nothing else in it changes; the manifest is not hashed); -> the ranges."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise NetsiamError(f"{path}: no manifest (train the model first: make model)")
    manifest = orjson.loads(path.read_bytes())
    with tempfile.TemporaryDirectory(prefix="netsiam-ranges-") as tmp:
        traces, labels = training_data(tmp)
        evidence = training_evidence(training_config(), traces, labels, EXCLUDED_LABELS)
    manifest.update(evidence)
    ranges = dict(evidence[MANIFEST_KEY])
    atomic_write_bytes(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return ranges


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", default=str(default_model_path()))
    ap.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    ap.add_argument("--seed", type=int, default=MODEL_SEED, help="training seed (the shipped model's by default)")
    ap.add_argument("--ranges-only", action="store_true",
                    help="only rewrite the manifest's normal ranges, fault signatures and marks (evidence), without training")
    args = ap.parse_args(argv)
    quiet.install()                         # TensorFlow's start-up lines, as the CLI keeps them out
    t0 = time.perf_counter()
    if args.ranges_only:
        ranges = write_ranges(args.output)
        print(f"normal ranges of {len(ranges)} features, the fault signatures and marks written to {Path(args.output) / MANIFEST_FILE} "
              f"in {time.perf_counter() - t0:.0f} s")
        return 0
    with tempfile.TemporaryDirectory(prefix="netsiam-model-") as tmp:
        traces, labels = training_data(tmp)
        staging = Path(tmp) / "artifact"
        train(training_config(), traces, labels, staging, logdir=Path(tmp) / "logs", quiet=args.quiet,
              exclude_labels=EXCLUDED_LABELS, seed=args.seed)
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
