"""Real traffic, leave one recording out: ``python -m bench.realtraffic [--select | --report]``.

For each held-out recording of the real-SIPp corpus (``deploy/testbed/corpus``) a model is trained
on every other recording (``degraded`` episodes left out: a class the model must not know) plus the
default model's simulated data, then the held-out recording is evaluated as ``netsiam evaluate``
does: the encoder, the per-second expert rule and the raw nearest-prototype baseline through the
daemon's debounce, on the same windows.

``--select`` holds out only the VALIDATION recordings (``val_*``): what recipes, thresholds and
debounce settings are chosen on; each ``unseen_*`` recording, which no model trains on, is then judged
by every one of those models too. ``--report`` holds out every reported and novel recording (never
used for a choice) and writes ``bench/realtraffic.json``; the worst recording is what counts.
``--set KEY=VALUE`` overrides config keys (``window.length=10``) for a candidate recipe, ``--sim-set``
the simulator's (``min_gap_s=5``); ``--sim-novel`` also judges each model on a simulated fault none
knows (``slow_answers``), for choosing novelty settings without looking at a real never-seen fault;
``--splice`` adds back-to-back faults spliced from each training recording
(:mod:`netsiam.trainer.splice`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from netsiam.config import Config, override  # noqa: E402
from netsiam.trainer.corpus import role_of  # noqa: E402

__all__ = ["DETECTORS", "evaluate_recording", "judge_sim_novel", "main", "slow_answers", "train_fold", "train_without", "training_files",
           "write_simulation"]

HERE = Path(__file__).resolve().parent
DETECTORS = ("encoder", "expert_rule", "raw_nearest_prototype")
NOVEL = "degraded"
SIM_NOVEL_SOURCES, SIM_NOVEL_MINUTES, SIM_NOVEL_SEED = 12, 15.0, 4242   # --sim-novel: 13 slow_answers episodes


def splice_file(name: str, files: tuple[Path, Path], out_dir: Path, overlay: bool = False) -> tuple[Path, Path] | None:
    """The recording's back-to-back splices (:mod:`netsiam.trainer.splice`) as a trace + labels file."""
    import numpy as np
    import orjson

    from netsiam.traceio import read_labels, read_trace, write_labels, write_trace
    from netsiam.trainer.splice import spliced

    out = (out_dir / f"{name}~splice.jsonl", out_dir / f"{name}~splice.csv")
    if not out[0].is_file():
        recs = [orjson.loads(line) for _, line in read_trace(files[0])]
        rng = np.random.default_rng(sum(name.encode()))
        r, lab = spliced(recs, read_labels(files[1]), rng, exclude=(NOVEL,), overlay=overlay)
        if not r:
            return None
        write_trace(out[0], r)
        write_labels(out[1], lab)
    return out


def _trained(held_out: set[str], traces: dict[str, tuple[Path, Path]]) -> list[str]:
    """The recordings a model trained without ``held_out`` reads: no model trains on an ``unseen_`` one."""
    return sorted(n for n in traces if n not in held_out and role_of(n) != "unseen")


def training_files(held_out: set[str], traces: dict[str, tuple[Path, Path]], sim: tuple[Path, Path] | None
                   ) -> tuple[list[Path], list[Path]]:
    """The traces and labels a model trained without ``held_out`` reads (before any splices)."""
    names = _trained(held_out, traces)
    return ([traces[n][0] for n in names] + ([sim[0]] if sim else []),
            [traces[n][1] for n in names] + ([sim[1]] if sim else []))


def train_without(cfg: Config, held_out: set[str], traces: dict[str, tuple[Path, Path]], sim: tuple[Path, Path] | None,
                  out: Path, seed: int = 0, splice: str | None = None) -> Any:
    """``splice``: None, ``cut`` or ``overlay`` (the splices are kept beside ``out``, one folder per kind)."""
    from netsiam.trainer.train import train

    names = _trained(held_out, traces)
    data, labels = training_files(held_out, traces, sim)
    if splice is not None:
        splice_dir = out.parent / f"splices-{splice}"
        splice_dir.mkdir(parents=True, exist_ok=True)
        for n in names:
            if (sp := splice_file(n, traces[n], splice_dir, overlay=splice == "overlay")) is not None:
                data.append(sp[0])
                labels.append(sp[1])
    return train(cfg, data, labels, out, seed=seed, exclude_labels=[NOVEL], quiet=True)


def evaluate_recording(art: Any, files: tuple[Path, Path], novel: str = NOVEL, cfg: Config | None = None) -> dict[str, Any]:
    """The evaluate report of one recording, cut to what this benchmark compares (``novel``: the class
    no model knows, whose windows should read ``unknown``; ``cfg``: its debounce, default the built-in)."""
    from netsiam.trainer.evaluate import config_for_artifact, evaluate_detailed, load_labelled

    cfg = config_for_artifact(cfg or Config(), art, explicit=False)
    lw, intervals = load_labelled([str(files[0])], [str(files[1])], cfg)
    ev = evaluate_detailed(art, lw, cfg, intervals=intervals, novel_labels=(novel,))
    r = ev.report
    b = r["baselines"]
    return {
        "detectors": {k: {"window_accuracy": b[k]["window_accuracy"], **b[k]["detection"]}
                      for k in DETECTORS if k in b and "detection" in b[k]},
        "episodes": [{k: e[k] for k in ("label", "start", "end", "detected_label", "raised", "delay_s", "clear_s")}
                     for e in r["episodes"]],
        "events": [{"fault": e.fault, "raised_at": e.raised_at, "cleared_at": e.cleared_at} for e in ev.events],
        "novelty": r["novelty"],
    }


def _line(name: str, res: dict[str, Any]) -> str:
    parts = [f"{name:<14}"]
    for k, d in res["detectors"].items():
        md, xd = d["median_delay_s"], d["max_delay_s"]
        parts.append(f"{k[:7]}: first {d['first_label_correct']}/{d['episodes']} once {d['raised_once']} "
                     f"delay {'-' if md is None else f'{md:.1f}/{xd:.1f}'} "
                     f"clear {'-' if d['max_clear_s'] is None else round(d['max_clear_s'], 1)} "
                     f"fr/h {d['false_raises_per_hour'] or 0:.1f} acc {d['window_accuracy'] or 0:.3f}")
    return " | ".join(parts)


def write_simulation(files: tuple[Path, Path], sources: int, minutes: float, seed: int, params: Any) -> tuple[Path, Path]:
    """Simulated traffic written as a trace and its labels (``files``); -> ``files``."""
    from netsiam.traceio import write_labels, write_trace
    from netsiam.trainer.simulate import simulate

    records, labels = simulate(sources, minutes, seed, params)
    write_trace(files[0], records)
    write_labels(files[1], labels)
    return files


def slow_answers(path: Path) -> tuple[Path, Path]:
    """A simulated fault none of these models knows (far ends answering 100-400 ms late), among known ones."""
    from netsiam.trainer.default_model import TRAIN_PARAMS
    from netsiam.trainer.simulate import SLOW_ANSWERS

    return write_simulation((path / "slow_answers.jsonl", path / "slow_answers.csv"), SIM_NOVEL_SOURCES,
                            SIM_NOVEL_MINUTES, SIM_NOVEL_SEED,
                            replace(TRAIN_PARAMS, faults=(*TRAIN_PARAMS.faults, SLOW_ANSWERS)))


def judge_sim_novel(art: Any, files: tuple[Path, Path], cfg: Config | None = None) -> dict[str, Any]:
    """How ``art`` meets the simulated fault it never learnt (:func:`slow_answers`): the share of its
    windows called ``unknown``, its episodes first raised ``unknown``, and the false raises around them."""
    from netsiam.trainer.simulate import SLOW_ANSWERS

    nov = evaluate_recording(art, files, novel=SLOW_ANSWERS, cfg=cfg)
    slow = [e for e in nov["episodes"] if e["label"] == SLOW_ANSWERS]
    enc = nov["detectors"]["encoder"]
    return {"unknown_rate": nov["novelty"].get(SLOW_ANSWERS, {}).get("unknown_rate"),
            "first_raised_unknown": sum(e["detected_label"] == "unknown" for e in slow), "episodes": len(slow),
            "first_label_correct": enc["first_label_correct"], "all_episodes": enc["episodes"],
            "false_raises": enc["false_raises"]}


def train_fold(job: tuple[Any, ...]) -> None:
    """:func:`train_without` of one job ``(cfg, held_out, traces, sim, out, seed, splice)`` in a worker of
    :func:`netsiam.trainer.workers.side_by_side` (a fold here, a leave-one-out model in ``bench.accuracy``):
    the model stays in its folder, as an artifact does not pickle."""
    train_without(*job)


def run(cfg: Config, held: list[str], traces: dict[str, tuple[Path, Path]], sim: tuple[Path, Path] | None,
        models: Path, seed: int, splice: str | None = None, sim_novel: tuple[Path, Path] | None = None) -> dict[str, Any]:
    from netsiam.trainer.simulate import SLOW_ANSWERS

    out: dict[str, Any] = {}
    unseen = [n for n in held if role_of(n) == "unseen"]
    if unseen and len(unseen) == len(held):
        raise SystemExit("an unseen_ recording is judged by the models trained without a validation one: "
                         "hold out a val_ recording too (--select does)")
    from netsiam.serving import load_artifact
    from netsiam.trainer.workers import side_by_side, workers_for

    folds = [n for n in held if n not in unseen]
    jobs = [(cfg, {name}, traces, sim, models / f"model-{name}", seed, splice) for name in folds]
    workers = workers_for(len(jobs))
    if workers > 1:                      # every fold's model first, one per core: the same weights
        t0 = time.perf_counter()
        side_by_side(train_fold, jobs, workers)
        print(f"{len(jobs)} models trained, {workers} at a time, in {time.perf_counter() - t0:.0f} s", flush=True)
    for name, job in zip(folds, jobs, strict=True):
        t0 = time.perf_counter()
        art = load_artifact(job[4]) if workers > 1 else train_without(*job)   # job[4]: its folder
        res = evaluate_recording(art, traces[name], cfg=cfg)
        res["train_seconds"] = round(time.perf_counter() - t0, 1)    # its training here only if not side by side
        res["epochs"] = art.manifest["metrics"]["epochs_run"]
        out[name] = res
        print(_line(name, res), flush=True)
        for u in unseen:                 # no model trains on it: each judges it as a testbed it never saw
            out[f"{u} (model without {name})"] = ures = evaluate_recording(art, traces[u], cfg=cfg)
            print(_line(u, ures), flush=True)
        if sim_novel is not None:
            res["sim_novel"] = sn = judge_sim_novel(art, sim_novel, cfg)
            res["shift_probe"] = art.manifest["metrics"]["shift_probe"]["score"]
            print(f"{'':<14} simulated {SLOW_ANSWERS}: windows unknown {sn['unknown_rate']}, "
                  f"episodes first raised unknown {sn['first_raised_unknown']}/{sn['episodes']} "
                  f"(input-shift probe {res['shift_probe']})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--select", action="store_true", help="hold out the validation recordings only")
    mode.add_argument("--report", action="store_true", help="hold out every reported and novel recording")
    ap.add_argument("--only", nargs="*", default=None, help="hold out these recordings")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE (YAML values)")
    ap.add_argument("--sim-set", nargs="*", default=[], help="simulator overrides KEY=VALUE (min_gap_s=5)")
    ap.add_argument("--no-sim", action="store_true", help="train on the corpus alone")
    ap.add_argument("--splice", nargs="?", const="cut", choices=("cut", "overlay"), default=None,
                    help="also train on back-to-back faults spliced from each training recording (overlay: the "
                         "first fault's aftermath goes on under the second)")
    ap.add_argument("--sim-novel", action="store_true",
                    help="also judge each model on a simulated fault it never saw (slow_answers): novelty, chosen on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="keep imported traces here (default: a temp dir)")
    ap.add_argument("--models", default=None, help="keep the trained models here (default: a temp dir)")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args(argv)

    from netsiam.trainer.corpus import load_corpus, to_traces
    from netsiam.trainer.default_model import (
        TRAIN_MINUTES,
        TRAIN_PARAMS,
        TRAIN_SEED,
        TRAIN_SOURCES,
        training_config,
    )

    # the shipped model's recipe, plus the candidate's overrides
    cfg = override(training_config(), {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    recs = load_corpus()
    role = {r.name: r.role for r in recs}
    if args.only:
        held = args.only
    elif args.report:
        held = [n for n, r in role.items() if r in ("reported", "novel")]
    else:
        held = [n for n, r in role.items() if r in ("validation", "unseen")]
    with tempfile.TemporaryDirectory(prefix="netsiam-realtraffic-") as tmp_s:
        tmp = Path(tmp_s)
        traces = to_traces(recs, Path(args.cache) if args.cache else tmp / "traces")
        sim = None
        if not args.no_sim:
            params = replace(TRAIN_PARAMS, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sim_set)})
            sim = write_simulation((tmp / "sim.jsonl", tmp / "sim.csv"), TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED, params)
        sim_novel = slow_answers(tmp) if args.sim_novel else None
        t0 = time.perf_counter()
        res = run(cfg, held, traces, sim, Path(args.models) if args.models else tmp, args.seed, args.splice, sim_novel)
    doc = {"overrides": args.set, "sim_overrides": args.sim_set, "splice": args.splice, "sim": not args.no_sim, "seed": args.seed, "held_out": held,
           "seconds": round(time.perf_counter() - t0, 1), "recordings": res}
    if args.output or args.report:
        path = Path(args.output) if args.output else HERE / "realtraffic.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{path} written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
