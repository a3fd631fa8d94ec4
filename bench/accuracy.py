"""Model accuracy targets a-f, measured end to end: ``python -m bench.accuracy [--quick]``.

Writes bench/accuracy.json (``--quick``: bench/accuracy-quick.json) and prints a markdown table.

a. simulated: models trained on the default model's data with its recipe (``make model``'s
   simulation and ``default_model.training_config()``, training seeds 0, 1, 2) and scored on a simulation with another seed (other sources, other testbed
   constants): n-way window accuracy, pair AUC, window accuracy with ``unknown``; the two baselines
   are fitted on the SAME training windows (``evaluate(..., support=training windows)``), so the
   comparison is fair.
b. real SIPp: ``netsiam train`` (config defaults) on sipp_a, evaluated on sipp_b, and b -> a (same seeds): window
   accuracy, fault episodes detected through the daemon's debounce, detection delays.
c. novelty: the simulated ``retrans_storm`` fault (never in training) must come out ``unknown``;
   sipp_c's ``degraded`` episode is scored for the real-data models of b.
d. few-shot: ``prototypes add`` with 10 retrans_storm windows (evenly spread, as
   ``--max-examples 10`` picks them); recall on the OTHER retrans_storm windows, and the known
   classes' window accuracy afterwards.
e. ``make model`` wall time (a subprocess writing to a temporary directory; the shipped model is
   not touched). Its artifact is the seed-0 model of a (same data, same seed).
f. the shipped default model (simulation only) on the real recordings.

``--quick`` (a smoke test, ~1.5 min): one seed, a shortened training (few epochs), b in one
direction, no ``make model`` timing; its numbers are not the targets'.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from netsiam.config import Config, override  # noqa: E402
from netsiam.importers.sipp import import_sipp  # noqa: E402
from netsiam.traceio import write_labels, write_trace  # noqa: E402
from netsiam.trainer.simulate import FAULT_KINDS, SimParams, simulate  # noqa: E402

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"
EVAL_SEED, NOVEL_SEED, EVAL_SOURCES, EVAL_MINUTES = 2, 3, 6, 30.0
NOVEL = "retrans_storm"
FEW_SHOT = 10
TARGETS = {"sim_n_way": 0.97, "sim_auc": 0.985, "real_window_accuracy": 0.95, "novel_unknown": 0.90,
           "few_shot_recall": 0.90, "make_model_s": 180.0, "default_real_window_accuracy": 0.90}


# ------------------------------------------------------------------------------------------------ data

def _sim(directory: Path, name: str, seed: int, faults: tuple[str, ...]) -> tuple[Path, Path]:
    records, labels = simulate(EVAL_SOURCES, EVAL_MINUTES, seed, SimParams(faults=faults))
    trace, lab = directory / f"{name}.jsonl", directory / f"{name}.csv"
    write_trace(trace, records)
    write_labels(lab, labels)
    return trace, lab


def _sipp(directory: Path, name: str) -> tuple[Path, Path]:
    meta = json.loads((DATA / f"{name}_meta.json").read_text())
    trace = directory / f"{name}.jsonl"
    write_trace(trace, import_sipp([DATA / f"{name}_stat.csv"], meta["source"]))
    return trace, DATA / f"{name}_labels.csv"


# ------------------------------------------------------------------------------------------------ scoring

def _cfg_for(art: Any) -> Config:
    from netsiam.trainer.evaluate import config_for_artifact

    return config_for_artifact(Config(), art, explicit=False)


def _report(art: Any, files: tuple[Path, Path], support: Any = None, novel: tuple[str, ...] = ()) -> dict[str, Any]:
    from netsiam.trainer.evaluate import evaluate, load_labelled

    cfg = _cfg_for(art)
    lw, intervals = load_labelled([str(files[0])], [str(files[1])], cfg)
    return evaluate(art, lw, cfg, novel_labels=novel, intervals=intervals, support=support)


def _episodes(r: dict[str, Any]) -> dict[str, Any]:
    det = r["detection"]
    return {"episodes": det["episodes"], "detected": det["detected"], "label_correct": det["label_correct"],
            "delays_s": [None if e["delay_s"] is None else round(e["delay_s"], 1) for e in r["episodes"]],
            "false_alarms": det["false_alarms"]}


def _few_shot(art: Any, files: tuple[Path, Path]) -> dict[str, Any]:
    """Add NOVEL from FEW_SHOT of its windows (a copy of the prototypes); score the rest."""
    from netsiam.trainer.dataset import build_windows
    from netsiam.trainer.prototypes import add_class

    cfg = _cfg_for(art)
    lw = build_windows([str(files[0])], [str(files[1])], cfg)
    mine = np.flatnonzero((lw.labels == NOVEL) & ~lw.straddle)
    pick = mine[np.round(np.linspace(0, len(mine) - 1, FEW_SHOT)).astype(int)]
    rest = np.setdiff1d(mine, pick)
    added = copy.copy(art)
    added.prototypes = copy.deepcopy(art.prototypes)
    thr = add_class(added, NOVEL, lw.x[pick], cfg.prototypes)
    names, _, _ = added.prototypes.classify(added.embed(lw.x[rest]))
    known = ~lw.straddle & (lw.labels != NOVEL)
    names_k, _, _ = added.prototypes.classify(added.embed(lw.x[known]))
    return {"examples": int(len(pick)), "scored": int(len(rest)), "threshold": round(thr, 4),
            "recall": float(np.mean(names == NOVEL)),
            "predicted": {str(k): int(v) for k, v in zip(*np.unique(names, return_counts=True), strict=True)},
            "known_window_accuracy_after": float(np.mean(names_k == lw.labels[known]))}


def _sim_scores(art: Any, support: Any, ev: tuple[Path, Path], nov: tuple[Path, Path]) -> dict[str, Any]:
    r = _report(art, ev, support=support)
    b = r["baselines"]
    rn = _report(art, nov, support=support, novel=(NOVEL,))
    bn = rn["baselines"]
    pick = ("window_accuracy", "n_way_accuracy", "binary_accuracy")
    return {
        "n_way_accuracy": r["n_way_accuracy"], "auc": r["auc"], "window_accuracy": r["window_accuracy"],
        "binary_accuracy": r["binary_accuracy"], "false_alarms_per_hour": r["false_alarms_per_hour"],
        "detection": _episodes(r),
        "baselines": {k: {m: b[k].get(m) for m in pick} for k in ("encoder", "raw_nearest_prototype", "zscore_rule")},
        # open set: the novel simulation, whose right answer for NOVEL windows is `unknown`
        "baselines_open_set": {k: {m: bn[k].get(m) for m in pick} for k in ("encoder", "raw_nearest_prototype",
                                                                             "zscore_rule")},
        "novel_unknown_rate": rn["novelty"][NOVEL]["unknown_rate"],
        "novel_predicted": rn["novelty"][NOVEL]["predicted"],
        "few_shot": _few_shot(art, nov),
        "thresholds": dict(zip(art.prototypes.classes, [round(t, 4) for t in art.prototypes.thresholds], strict=True)),
        "epochs_run": art.manifest["metrics"]["epochs_run"], "best_epoch": art.manifest["metrics"]["best_epoch"],
        "train_seconds": art.manifest.get("train_seconds"),
    }


def _real_scores(art: Any, target: tuple[Path, Path], novel: tuple[Path, Path], support: Any = None
                 ) -> dict[str, Any]:
    r = _report(art, target, support=support)
    rc = _report(art, novel)
    b = r["baselines"]
    return {"window_accuracy": r["window_accuracy"], "n_way_accuracy": r["n_way_accuracy"],
            "confusion": r["confusion"], "detection": _episodes(r),
            "baselines": {k: {m: b[k].get(m) for m in ("window_accuracy", "n_way_accuracy", "binary_accuracy")}
                          for k in ("encoder", "raw_nearest_prototype", "zscore_rule")},
            "sipp_c": {"window_accuracy": rc["window_accuracy"],
                       "degraded_unknown_rate": rc["novelty"].get("degraded", {}).get("unknown_rate"),
                       "detection": _episodes(rc)},
            "train_seconds": art.manifest.get("train_seconds")}


def _agg(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    return {"mean": float(np.mean(v)) if v else None, "min": float(np.min(v)) if v else None}


# ------------------------------------------------------------------------------------------------ main

def run(quick: bool, tmp: Path) -> dict[str, Any]:
    from netsiam.serving import load_artifact
    from netsiam.trainer.dataset import build_windows
    from netsiam.trainer.default_model import training_config, training_data
    from netsiam.trainer.train import train

    seeds = [0] if quick else [0, 1, 2]
    cfg = Config()
    if quick:
        cfg = override(cfg, {"training.epochs": 4, "training.steps_per_epoch": 30})
    t0 = time.perf_counter()
    train_files = training_data(tmp)
    ev = _sim(tmp, "eval", EVAL_SEED, SimParams().faults)
    nov = _sim(tmp, "novel", NOVEL_SEED, FAULT_KINDS)
    real = {n: _sipp(tmp, n) for n in ("sipp_a", "sipp_b", "sipp_c")}
    out: dict[str, Any] = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                       "cpus": os.cpu_count(), "quick": quick},
                           "seeds": seeds, "targets": TARGETS}

    # e. make model (full run): its artifact is also the seed-0 model of a.
    models: dict[int, Any] = {}
    if not quick:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "netsiam.trainer.default_model", "-o", str(tmp / "make_model"),
                               "--quiet"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"make model failed:\n{proc.stderr[-3000:]}")
        out["make_model_seconds"] = round(time.perf_counter() - t, 1)
        models[0] = load_artifact(tmp / "make_model")
        print(f"e. make model: {out['make_model_seconds']} s", flush=True)

    # a, c, d. simulated
    support = build_windows([str(train_files[0])], [str(train_files[1])], cfg)
    sim: dict[str, Any] = {}
    for seed in seeds:
        art = models.get(seed) or train(training_config(cfg), [train_files[0]], [train_files[1]],
                                        tmp / f"sim_s{seed}", seed=seed, quiet=True)
        sim[str(seed)] = _sim_scores(art, support, ev, nov)
        s = sim[str(seed)]
        print(f"a. seed {seed}: n-way {s['n_way_accuracy']:.4f}  AUC {s['auc']:.4f}  window {s['window_accuracy']:.4f}  "
              f"novel unknown {s['novel_unknown_rate']:.3f}  few-shot {s['few_shot']['recall']:.3f}", flush=True)
    out["simulated"] = sim

    # b. real: train on one recording, evaluate on the other (+ sipp_c's novel `degraded`)
    pairs = [("sipp_a", "sipp_b")] if quick else [("sipp_a", "sipp_b"), ("sipp_b", "sipp_a")]
    rr: dict[str, Any] = {}
    for src, dst in pairs:
        for seed in seeds:
            art = train(cfg, [real[src][0]], [real[src][1]], tmp / f"{src}_s{seed}", seed=seed, quiet=True)
            sup = build_windows([str(real[src][0])], [str(real[src][1])], cfg)
            rr[f"{src}->{dst}/{seed}"] = res = _real_scores(art, real[dst], real["sipp_c"], sup)
            print(f"b. {src} -> {dst} seed {seed}: window {res['window_accuracy']:.3f}  episodes "
                  f"{res['detection']['detected']}/{res['detection']['episodes']}  delays {res['detection']['delays_s']}",
                  flush=True)
    out["real"] = rr

    # f. the shipped default model on the real recordings
    from netsiam.serving import default_model_path

    if (default_model_path() / "manifest.json").is_file():
        art = load_artifact(None)
        out["default_model"] = {"version": art.version, **{n: {"window_accuracy": (r := _report(art, real[n], support))[
            "window_accuracy"], "n_way_accuracy": r["n_way_accuracy"], "novelty": r["novelty"],
            "detection": _episodes(r), "baselines": {k: {m: r["baselines"][k].get(m) for m in (
                "window_accuracy", "n_way_accuracy", "binary_accuracy")} for k in (
                "encoder", "raw_nearest_prototype", "zscore_rule")}} for n in real}}
        out["default_model"]["simulated"] = _sim_scores(art, support, ev, nov)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what, measured (mean / min over seeds), target, pass."""
    sim = list(res["simulated"].values())
    real = list(res["real"].values())
    rows: list[dict[str, Any]] = []

    def row(key: str, what: str, vals: list[float | None], target: float | None, higher: bool = True) -> None:
        a = _agg(vals)
        worst = a["min"] if higher else (max(v for v in vals if v is not None) if any(v is not None for v in vals)
                                         else None)
        ok = None if target is None or worst is None else (worst >= target if higher else worst <= target)
        rows.append({"target": key, "what": what, "mean": a["mean"], "worst": worst, "goal": target, "pass": ok})

    row("a", "sim n-way accuracy", [s["n_way_accuracy"] for s in sim], TARGETS["sim_n_way"])
    row("a", "sim pair AUC", [s["auc"] for s in sim], TARGETS["sim_auc"])
    row("a", "sim window accuracy (with unknown)", [s["window_accuracy"] for s in sim], None)
    for b, m in (("raw_nearest_prototype", "n_way_accuracy"), ("raw_nearest_prototype", "window_accuracy"),
                 ("zscore_rule", "binary_accuracy")):
        row("a", f"baseline {b} {m} (encoder: {_agg([s['baselines']['encoder'][m] for s in sim])['mean']:.4f})",
            [s["baselines"][b][m] for s in sim], None)
    for b, m in (("raw_nearest_prototype", "window_accuracy"), ("zscore_rule", "binary_accuracy")):
        enc = _agg([s["baselines_open_set"]["encoder"][m] for s in sim])["mean"]
        row("a/c", f"open set (novel sim): baseline {b} {m} (encoder: {enc:.4f})",
            [s["baselines_open_set"][b][m] for s in sim], None)
    row("b", "real window accuracy (a->b, b->a)", [r["window_accuracy"] for r in real], TARGETS["real_window_accuracy"])
    for b, m in (("raw_nearest_prototype", "window_accuracy"), ("zscore_rule", "binary_accuracy")):
        enc = _agg([r["baselines"]["encoder"][m] for r in real])["mean"]
        row("b", f"real: baseline {b} {m}, fitted on the training recording (encoder: {enc:.4f})",
            [r["baselines"][b][m] for r in real], None)
    row("b", "real episodes detected (share)", [r["detection"]["detected"] / max(r["detection"]["episodes"], 1)
                                                for r in real], 1.0)
    row("b", "real detection delay s (max over episodes)", [max((d for d in r["detection"]["delays_s"] if d is not None),
                                                              default=None) for r in real], None, higher=False)
    row("c", f"sim {NOVEL} unknown rate", [s["novel_unknown_rate"] for s in sim], TARGETS["novel_unknown"])
    row("c", "sipp_c degraded unknown rate (real-data models)", [r["sipp_c"]["degraded_unknown_rate"] for r in real],
        None)
    row("d", f"few-shot recall ({FEW_SHOT} examples added)", [s["few_shot"]["recall"] for s in sim],
        TARGETS["few_shot_recall"])
    row("d", "known-class window accuracy after the add", [s["few_shot"]["known_window_accuracy_after"] for s in sim],
        None)
    if "make_model_seconds" in res:
        row("e", "make model wall time, s", [res["make_model_seconds"]], TARGETS["make_model_s"], higher=False)
    if "default_model" in res:
        dm = res["default_model"]
        for n in ("sipp_a", "sipp_b", "sipp_c"):
            det = dm[n]["detection"]
            row("f", f"default model on {n}: window accuracy (episodes {det['detected']}/{det['episodes']}, "
                     f"delays {det['delays_s']})", [dm[n]["window_accuracy"]],
                TARGETS["default_real_window_accuracy"] if n != "sipp_c" else None)
        row("f", "default model on the sim eval: n-way accuracy", [dm["simulated"]["n_way_accuracy"]], None)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) and v <= 1.0 else f"{v:.1f}"
                                      if isinstance(v, float) else str(v))

    lines = ["| target | measure | mean | worst | goal | pass |", "|---|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r["pass"] is None else ("yes" if r["pass"] else "**no**")
        lines.append(f"| {r['target']} | {r['what']} | {f(r['mean'])} | {f(r['worst'])} | {f(r['goal'])} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, short training: a smoke test")
    ap.add_argument("-o", "--output", default=None, help="results JSON (default bench/accuracy.json)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="netsiam-accuracy-") as tmp:
        res = run(args.quick, Path(tmp))
    res["summary"] = summary(res)
    out = Path(args.output) if args.output else HERE / ("accuracy-quick.json" if args.quick else "accuracy.json")
    out.write_text(json.dumps(res, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    print(table(res["summary"]))
    print(f"\n{out} written ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
