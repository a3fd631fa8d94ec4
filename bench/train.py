"""``train_seconds``: train the default model (``make model``'s recipe) in a fresh process, then score it.

``python -m bench.train -o DIR`` runs ``netsiam.trainer.default_model`` (``make model``: simulate the
training data, train with the config defaults) into ``DIR``, timed around the whole call (simulation
included); then evaluates the artifact (``netsiam evaluate``'s metrics) on a trace simulated with
another seed, not timed. ``--epochs/--steps`` (for ``--quick``) train on the same data with a
shortened schedule instead. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

__all__ = ["EVAL_SEED", "main"]

EVAL_SEED = 1001  # not TRAIN_SEED: accuracy on data the model never saw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", required=True, help="artifact directory to write")
    ap.add_argument("--epochs", type=int, default=None, help="override training.epochs (quick runs)")
    ap.add_argument("--steps", type=int, default=None, help="override training.steps_per_epoch (quick runs)")
    ap.add_argument("--eval-minutes", type=float, default=20.0)
    args = ap.parse_args(argv)

    from netsiam.config import Config, override
    from netsiam.serving import load_artifact
    from netsiam.traceio import write_labels, write_trace
    from netsiam.trainer import default_model
    from netsiam.trainer.evaluate import config_for_artifact, evaluate, load_labelled
    from netsiam.trainer.simulate import simulate
    from netsiam.trainer.train import train

    params = default_model.TRAIN_PARAMS
    with tempfile.TemporaryDirectory(prefix="netsiam-bench-train-") as tmp:
        t0 = time.perf_counter()
        if args.epochs is None and args.steps is None:
            # exactly `make model` (whatever its recipe becomes), into our directory
            default_model.main(["-o", args.output, "--quiet"])
            seconds = time.perf_counter() - t0
            art = load_artifact(args.output)
        else:  # --quick: the same data, a shortened training
            cfg = override(default_model.training_config(),
                           {"training.epochs": args.epochs, "training.steps_per_epoch": args.steps})
            traces, labels = default_model.training_data(tmp)
            art = train(cfg, traces, labels, args.output, logdir=Path(tmp) / "logs", quiet=True,
                        exclude_labels=default_model.EXCLUDED_LABELS)
            seconds = time.perf_counter() - t0

        etrace, elabels = Path(tmp) / "eval.jsonl", Path(tmp) / "eval_labels.csv"
        records, intervals = simulate(default_model.TRAIN_SOURCES, args.eval_minutes, EVAL_SEED, params)
        write_trace(etrace, records)
        write_labels(elabels, intervals)
        ecfg = config_for_artifact(Config(), art, explicit=False)
        lw, ivs = load_labelled([str(etrace)], [str(elabels)], ecfg)
        report = evaluate(art, lw, ecfg, intervals=ivs)
    m = art.manifest["metrics"]
    print(json.dumps({
        "train_seconds": round(seconds, 1),
        "train_fit_seconds": m["fit_seconds"],
        "train_epochs_run": m["epochs_run"],
        "train_val_n_way_accuracy": round(m["val_n_way_accuracy"], 4),
        "train_eval_seed": EVAL_SEED,
        "train_eval_window_accuracy": _r(report.get("window_accuracy")),
        "train_eval_n_way_accuracy": _r(report.get("n_way_accuracy")),
    }))
    return 0


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


if __name__ == "__main__":
    raise SystemExit(main())
