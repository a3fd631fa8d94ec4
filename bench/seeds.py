"""The shipped model's training seed, judged on validation only: ``python -m bench.seeds 1 2 3 4 5``.

Each seed trains the shipped recipe on the shipped data (``make model``'s: the corpus's recordings
but the novel and ``unseen_`` ones, plus the simulation); each model is then judged on a simulated fault none of them knows
(``slow_answers``, :func:`bench.realtraffic.slow_answers`) among known ones: the share of its windows
called ``unknown``, its episodes first raised ``unknown``, the known episodes first raised right and
the false raises. Every real recording but the ``unseen_`` ones is in the training data or reported, so none is looked at.
``--models DIR`` keeps the models (and reuses those already there).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["judge_seeds", "main"]


def judge_seeds(seeds: list[int], models: Path, work: Path) -> dict[int, dict[str, Any]]:
    from bench.realtraffic import judge_sim_novel, slow_answers
    from netsiam.config import override
    from netsiam.serving import load_artifact
    from netsiam.trainer.default_model import EXCLUDED_LABELS, training_config, training_data
    from netsiam.trainer.train import train

    files = slow_answers(work)
    data: tuple[list[Path], list[Path]] | None = None     # written once, if a seed needs training
    out: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        d = models / f"seed-{seed}"
        if (d / "manifest.json").is_file():
            art = load_artifact(d)
        else:
            data = data or training_data(work)
            # one training per seed: that is what this compares (the recipe's candidates choose among them)
            art = train(override(training_config(), {"training.candidates": 1}), *data, d, quiet=True,
                        exclude_labels=EXCLUDED_LABELS, seed=seed)
        out[seed] = r = {"version": art.version, **judge_sim_novel(art, files)}
        print(f"seed {seed}: windows unknown {r['unknown_rate']:.3f}, first raised unknown "
              f"{r['first_raised_unknown']}/{r['episodes']}, first raise right {r['first_label_correct']}/"
              f"{r['all_episodes']}, false raises {r['false_raises']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seeds", nargs="+", type=int)
    ap.add_argument("--models", default=None, help="keep the models here (default: a temp dir)")
    ap.add_argument("-o", "--output", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="netsiam-seeds-") as tmp:
        res = judge_seeds(args.seeds, Path(args.models) if args.models else Path(tmp) / "models", Path(tmp))
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
