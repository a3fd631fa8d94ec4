"""Model figures, real traffic first: ``python -m bench.accuracy [--quick]`` -> bench/accuracy.json + a table.

1. real, leave one recording out: for every REPORTED recording of the real-SIPp corpus a model is
   trained on all the other recordings plus the default model's simulation (``bench.realtraffic``)
   and judged on the held-out one beside the per-second expert rule and the raw nearest-prototype
   baseline, through the daemon's debounce: first raise right, one raise per episode, delays, clear
   times, false raises per hour. The worst recording per figure is what counts.
2. novelty: the same leave-one-out models on the ``novel_*`` recordings, whose ``degraded`` episodes
   no model was trained on: share of their windows called ``unknown``, episodes raised ``unknown``.
3. few-shot: ``degraded`` added to the shipped model from 10 windows of one episode of
   ``novel_r70_h8`` (``prototypes add``, no retraining); every other ``degraded`` episode of both
   novel recordings must then be raised ``degraded``, and the known faults stay as they were, there and
   on every other real recording (each episode raised as the shipped model raised it).
4. the shipped model as is on every real recording: the corpus (it trained on all but the novel
   and ``unseen_`` ones) and the four older recordings in ``tests/data`` made with another recorder
   (it never saw them).
5. ``make model`` wall time.

Recipes, thresholds and the expert rule's bounds were chosen on the corpus's ``val_*`` recordings
(``python -m bench.realtraffic --select``), never on the reported ones.
``--quick``: two held-out recordings, a short training; a smoke test, not the figures.
``--seeds 0 1 2``: every leave-one-out model trained once per seed; a figure is then the worst over
recordings and seeds (one training per recording says as much about the seed as about the recipe).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.common import machine_info  # noqa: E402
from netsiam.config import Config, override  # noqa: E402

__all__ = ["TARGETS", "leave_one_out_rows", "leave_one_out_sets", "main", "summary"]

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "data"
OLD_RECORDINGS = ("sipp_a", "sipp_b", "sipp_c")
NOVEL = "degraded"
FEW_SHOT = 10
LEARN_FROM = "novel_r70_h8"
TARGETS = {"median_delay_s": 3.0, "max_delay_s": 10.0, "max_clear_s": 10.0, "first_label_accuracy": 1.0,
           "false_raises_per_hour": 0.0, "delay_vs_rule_s": 1.0, "novel_unknown": 0.9, "few_shot_recall": 0.9,
           "make_model_s": 180.0}


def _old_traces(tmp: Path) -> dict[str, tuple[Path, Path]]:
    from netsiam.importers.sipp import import_sipp
    from netsiam.traceio import write_trace

    out = {}
    for name in OLD_RECORDINGS:
        meta = json.loads((FIXTURES / f"{name}_meta.json").read_text())
        trace = tmp / f"{name}.jsonl"
        write_trace(trace, import_sipp([FIXTURES / f"{name}_stat.csv"], meta["source"]))
        out[name] = (trace, FIXTURES / f"{name}_labels.csv")
    return out


def _few_shot(art: Any, traces: dict[str, tuple[Path, Path]], novel: list[str],
              elsewhere: dict[str, tuple[Path, Path]] | None = None,
              shipped: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add NOVEL from FEW_SHOT windows of LEARN_FROM's first NOVEL episode; judge every other episode.
    ``elsewhere``: recordings without NOVEL, each episode compared with ``shipped`` (the model as shipped)."""
    from bench.realtraffic import evaluate_recording
    from netsiam.traceio import read_labels
    from netsiam.trainer.dataset import build_windows
    from netsiam.trainer.evaluate import config_for_artifact
    from netsiam.trainer.prototypes import add_class

    cfg = config_for_artifact(Config(), art, explicit=False)
    lw = build_windows([str(traces[LEARN_FROM][0])], [str(traces[LEARN_FROM][1])], cfg)
    first = next(iv for iv in read_labels(traces[LEARN_FROM][1]) if iv.label == NOVEL)
    mine = np.flatnonzero((lw.labels == NOVEL) & ~lw.straddle & (lw.end_ts < first.end))
    pick = mine[np.round(np.linspace(0, len(mine) - 1, FEW_SHOT)).astype(int)]
    added = copy.copy(art)
    added.prototypes = copy.deepcopy(art.prototypes)
    threshold = add_class(added, NOVEL, lw.x[pick], cfg.prototypes)
    out: dict[str, Any] = {"examples": int(len(pick)), "from": f"{LEARN_FROM}, first {NOVEL} episode",
                           "threshold": round(threshold, 4), "recordings": {}}
    for name in novel:
        res = evaluate_recording(added, traces[name])
        eps = [e for e in res["episodes"] if not (name == LEARN_FROM and e["start"] == first.start)]
        out["recordings"][name] = {"episodes": [{k: e[k] for k in ("label", "detected_label", "raised", "delay_s")}
                                                for e in eps],
                                   "encoder": res["detectors"]["encoder"]}
    judged = [e for r in out["recordings"].values() for e in r["episodes"] if e["label"] == NOVEL]
    out["novel_first_label_right"] = sum(e["detected_label"] == NOVEL for e in judged)
    out["novel_episodes"] = len(judged)
    known = [e for r in out["recordings"].values() for e in r["episodes"] if e["label"] != NOVEL]
    out["known_first_label_right"] = sum(e["detected_label"] == e["label"] for e in known)
    out["known_episodes"] = len(known)
    # a new class must not take windows the known faults' episodes held (a freeze's recovery, say); the
    # episodes of NOVEL itself (an older recording has one) are meant to change
    out["elsewhere"] = {}
    for name, files in (elsewhere or {}).items():
        before = (shipped or {}).get(name)
        if name in novel or before is None:
            continue
        after = evaluate_recording(added, files)
        pairs = [(b, a) for b, a in zip(before["episodes"], after["episodes"], strict=True) if a["label"] != NOVEL]
        changed = [{"label": a["label"], "before": b["raised"], "after": a["raised"],
                    "clear_s": [b["clear_s"], a["clear_s"]]} for b, a in pairs if a["raised"] != b["raised"]]
        out["elsewhere"][name] = {"episodes": len(pairs), "changed": changed,
                                  "max_clear_s": [before["detectors"]["encoder"]["max_clear_s"],
                                                  after["detectors"]["encoder"]["max_clear_s"]],
                                  # raises in normal traffic: the new class must not claim it either
                                  "false_raises": [before["detectors"]["encoder"]["false_raises"],
                                                   after["detectors"]["encoder"]["false_raises"]]}
    return out


def _loro_dir(root: Path, name: str, seed: int) -> Path:
    return root / (f"loro-{name}" if seed == 0 else f"loro-{name}-seed{seed}")


def _train_missing(cfg: Config, names: list[str], seeds: list[int], traces: dict[str, tuple[Path, Path]],
                   sim: tuple[Path, Path], root: Path) -> set[tuple[str, int]]:
    """Train every leave-one-out model (held-out name x seed) not yet in ``root``, side by side, one process per
    core (:mod:`netsiam.trainer.workers`: the same weights as one after another); -> the (name, seed) trained
    here. Where they cannot run side by side nothing is trained here: :func:`_candidate` trains each in turn."""
    from bench.realtraffic import train_fold
    from netsiam.trainer.workers import side_by_side, workers_for

    missing = [(name, s) for s in seeds for name in names if not (_loro_dir(root, name, s) / "manifest.json").is_file()]
    workers = workers_for(len(missing))
    if workers < 2:
        return set()
    print(f"training {len(missing)} leave-one-out models, {workers} at a time", flush=True)
    side_by_side(train_fold, [(cfg, {name}, traces, sim, _loro_dir(root, name, s), s, None) for name, s in missing],
                 workers)
    return set(missing)


def _candidate(cfg: Config, name: str, seed: int, traces: dict[str, tuple[Path, Path]], sim: tuple[Path, Path],
               root: Path, probe_data: dict[str, Any], counts: dict[str, int] | None = None,
               fresh: set[tuple[str, int]] | None = None) -> tuple[Any, dict[str, Any]]:
    """The model trained without ``name`` with ``seed`` (reused if already in ``root``: kept by an earlier
    run with the same recipe, or a candidate of an earlier seed of this run) and its row for
    :func:`~netsiam.trainer.probe.pick_candidate`. ``probe_data``: the probe's windows per held-out
    recording, filled here (the split is the same for every seed); ``counts``: "trained" or "reused"
    counted up here (``fresh``: the models :func:`_train_missing` trained in this run, each counted once)."""
    from bench.realtraffic import train_without, training_files
    from netsiam.evidence import MANIFEST_KEY, MARK_KEY, SIGNATURE_KEY
    from netsiam.serving import load_artifact
    from netsiam.trainer.probe import candidate_row, shift_probe, shift_probe_windows
    from netsiam.trainer.train import training_evidence

    out_dir = _loro_dir(root, name, seed)
    reused = (out_dir / "manifest.json").is_file()
    if counts is not None:
        trained_here = fresh is not None and (name, seed) in fresh
        counts["reused" if reused and not trained_here else "trained"] += 1
        if fresh is not None:
            fresh.discard((name, seed))      # a later seed's candidate reuses it
    art = load_artifact(out_dir) if reused else train_without(cfg, {name}, traces, sim, out_dir, seed=seed)
    ev: dict[str, Any] | None = None
    for key in (SIGNATURE_KEY, MARK_KEY):    # trained before signatures (marks) existed: computed once, kept beside it
        if key in art.manifest:
            continue
        kept = out_dir / f"{key}.json"
        if not kept.is_file():
            if ev is None:
                ev = training_evidence(cfg, *training_files({name}, traces, sim), [NOVEL])
                if ev[MANIFEST_KEY] != art.manifest.get(MANIFEST_KEY):
                    raise SystemExit(f"{out_dir}: its normal ranges are not what its training data gives: retrain it")
            kept.write_text(json.dumps(ev[key]))
        art.manifest[key] = json.loads(kept.read_text())
    if "shift_probe" not in art.manifest["metrics"]:      # trained before the probe existed: probed once, kept beside it
        kept = out_dir / "shift_probe.json"
        if not kept.is_file():
            if name not in probe_data:
                probe_data[name] = shift_probe_windows(cfg, *training_files({name}, traces, sim), [NOVEL])
            kept.write_text(json.dumps(shift_probe(art, *probe_data[name], cfg.features)))
        art.manifest["metrics"]["shift_probe"] = json.loads(kept.read_text())
    return art, candidate_row(art)


def run(quick: bool, tmp: Path, models: Path | None = None, seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:
    from bench.realtraffic import evaluate_recording, write_simulation
    from netsiam.serving import load_artifact
    from netsiam.trainer.corpus import load_corpus, to_traces
    from netsiam.trainer.default_model import (
        TRAIN_MINUTES,
        TRAIN_PARAMS,
        TRAIN_SEED,
        TRAIN_SOURCES,
        training_config,
    )
    from netsiam.trainer.probe import pick_candidate

    t0 = time.perf_counter()
    cfg = training_config()                      # leave-one-out models follow the shipped model's recipe
    if quick:
        cfg = override(cfg, {"training.epochs": 3, "training.steps_per_epoch": 20})
    recs = load_corpus()
    traces = to_traces(recs, tmp / "traces")
    sim = write_simulation((tmp / "sim.jsonl", tmp / "sim.csv"), TRAIN_SOURCES, TRAIN_MINUTES, TRAIN_SEED, TRAIN_PARAMS)
    reported = [r.name for r in recs if r.role == "reported"]
    novel = [r.name for r in recs if r.role == "novel"]
    if quick:
        reported, novel = reported[:1], novel[:1]
    out: dict[str, Any] = {"machine": {**machine_info(), "quick": quick},
                           "targets": TARGETS, "corpus": {r.name: {"role": r.role, "rate": r.rate, "hold_s": r.hold_s}
                                                          for r in recs}}

    # 1 + 2. leave one recording out, once per seed. With the recipe's training.candidates N, "seed s" is
    # what `netsiam train --seed s` gives: the candidates s .. s+N-1 (one model folder each, so seeds
    # whose candidates overlap share them), the one the input-shift probe scores highest judged.
    out["seeds"] = list(seeds)
    n_cand = cfg.training.candidates
    single = override(cfg, {"training.candidates": 1})
    by_seed: dict[str, Any] = {}
    probe_data: dict[str, Any] = {}
    trainings = {"trained": 0, "reused": 0}   # candidates trained in this run, or kept from an earlier one
    t = time.perf_counter()
    fresh = _train_missing(single, reported + novel, sorted({s for seed in seeds for s in range(seed, seed + n_cand)}),
                           traces, sim, models or tmp)
    out["side_by_side_seconds"] = round(time.perf_counter() - t, 1)   # trainings; each recording's seconds below
    for seed in seeds:
        loro: dict[str, Any] = {}
        for name in reported + novel:
            t = time.perf_counter()
            cands = [_candidate(single, name, s, traces, sim, models or tmp, probe_data, trainings, fresh)
                     for s in range(seed, seed + n_cand)]
            rows = [c[1] for c in cands]
            best = pick_candidate(rows)
            loro[name] = evaluate_recording(cands[rows.index(best)][0], traces[name]) | {
                "train_seconds": round(time.perf_counter() - t, 1)}   # its trainings here only if not side by side
            if n_cand > 1:
                loro[name]["candidates"] = [r | {"chosen": r is best} for r in rows]
            enc = loro[name]["detectors"]["encoder"]
            print(f"1. {name} (seed {seed}, candidate {best['seed']}): first {enc['first_label_correct']}/"
                  f"{enc['episodes']}, delay {enc['median_delay_s']}/{enc['max_delay_s']} s, false {enc['false_raises']}",
                  flush=True)
        by_seed[str(seed)] = loro
    out["leave_one_out"] = by_seed.pop(str(seeds[0]))   # the first seed's, as one training per recording gives
    out["trainings"] = trainings
    out["leave_one_out_other_seeds"] = by_seed

    # 5. make model (its artifact is the shipped recipe; the shipped model itself is not touched)
    if not quick:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "netsiam.trainer.default_model", "-o", str(tmp / "make_model"),
                               "--quiet"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"make model failed:\n{proc.stderr[-3000:]}")
        out["make_model_seconds"] = round(time.perf_counter() - t, 1)

    # 3 + 4. the shipped model: few-shot, and as is on every real recording
    art = load_artifact(None)
    old = _old_traces(tmp)
    out["shipped"] = {"version": art.version,
                      "recordings": {n: evaluate_recording(art, f) for n, f in {**traces, **old}.items()}}
    out["few_shot"] = _few_shot(art, traces, [r.name for r in recs if r.role == "novel"], {**traces, **old},
                                out["shipped"]["recordings"])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _worst(rows: dict[str, Any], det: str, key: str, higher: bool) -> tuple[float | None, str | None]:
    vals = [(v["detectors"][det][key], n) for n, v in rows.items() if v["detectors"][det][key] is not None]
    if not vals:
        return None, None
    return (min if higher else max)(vals)


def leave_one_out_sets(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{seed: {recording: row}}``, the first seed first (a result from before ``--seeds``: seed 0 only)."""
    first = str(res.get("seeds", [0])[0])
    return {first: res["leave_one_out"], **res.get("leave_one_out_other_seeds", {})}


def leave_one_out_rows(res: dict[str, Any], seed: str | None = None) -> dict[str, Any]:
    """Every leave-one-out row of ``res``, named ``r40_h5_b2b`` for the first seed and ``r40_h5_b2b seed 1``
    for the others; ``seed``: that seed's rows only."""
    sets = leave_one_out_sets(res)
    first = next(iter(sets))
    return {(n if s == first else f"{n} seed {s}"): v for s, rows in sets.items() if seed in (None, s)
            for n, v in rows.items()}


def summary(res: dict[str, Any], seed: str | None = None) -> list[dict[str, Any]]:
    """One row per target: measured (worst recording and seed, which), the expert rule's, the goal, pass.
    ``seed``: the leave-one-out rows of that seed only (default: all of them)."""
    rows: list[dict[str, Any]] = []
    loro = leave_one_out_rows(res, seed)
    rep = {n: v for n, v in loro.items() if res["corpus"][n.split(" seed ")[0]]["role"] == "reported"}

    def add(what: str, enc: tuple[Any, Any], rule: Any, goal: Any, ok: bool | None) -> None:
        rows.append({"what": what, "encoder": enc[0], "worst_recording": enc[1], "rule": rule, "goal": goal, "pass": ok})

    for sel, label in (({**rep}, "leave one out"),
                       ({n: v for n, v in res["shipped"]["recordings"].items()
                         if n in OLD_RECORDINGS or res["corpus"].get(n, {}).get("role") == "reported"}, "shipped")):
        acc = _worst(sel, "encoder", "first_label_accuracy", True)
        add(f"{label}: first raise right (share of episodes)", acc, _worst(sel, "expert_rule", "first_label_accuracy",
            True)[0], 1.0, None if acc[0] is None else acc[0] >= 1.0)
        for key, goal in (("median_delay_s", 3.0), ("max_delay_s", 10.0), ("max_clear_s", 10.0),
                          ("false_raises_per_hour", 0.0)):
            w = _worst(sel, "encoder", key, False)
            add(f"{label}: {key}", w, _worst(sel, "expert_rule", key, False)[0], goal,
                None if w[0] is None else w[0] <= goal)
        once = [(v["detectors"]["encoder"]["raised_once"], v["detectors"]["encoder"]["episodes"], n) for n, v in sel.items()]
        worst = min(once, key=lambda o: o[0] / max(o[1], 1)) if once else (0, 0, None)
        add(f"{label}: episodes raised exactly once", (f"{worst[0]}/{worst[1]}", worst[2]), None, "all",
            worst[0] == worst[1])
    gaps = [(v["detectors"]["encoder"]["median_delay_s"] - v["detectors"]["expert_rule"]["median_delay_s"], n)
            for n, v in rep.items() if v["detectors"]["encoder"]["median_delay_s"] is not None
            and v["detectors"]["expert_rule"]["median_delay_s"] is not None]
    g = max(gaps) if gaps else (None, None)
    add("leave one out: median delay minus the rule's, s", g, 0.0, TARGETS["delay_vs_rule_s"],
        None if g[0] is None else g[0] <= TARGETS["delay_vs_rule_s"])
    beat = [(v["detectors"]["encoder"]["window_accuracy"] - v["detectors"]["raw_nearest_prototype"]["window_accuracy"], n)
            for n, v in rep.items() if "raw_nearest_prototype" in v["detectors"]]
    b = min(beat) if beat else (None, None)
    add("leave one out: window accuracy minus the raw prototype's", b, None, "> 0", None if b[0] is None else b[0] > 0)
    nov = [(v["novelty"][NOVEL]["unknown_rate"], n) for n, v in loro.items()
           if v["novelty"].get(NOVEL, {}).get("unknown_rate") is not None]
    nv = min(nov) if nov else (None, None)
    add(f"never-seen {NOVEL}: share of its windows unknown", nv, 0.0, TARGETS["novel_unknown"],
        None if nv[0] is None else nv[0] >= TARGETS["novel_unknown"])
    fs = res["few_shot"]
    add(f"{NOVEL} added from {fs['examples']} windows: other episodes raised {NOVEL}",
        (f"{fs['novel_first_label_right']}/{fs['novel_episodes']}", None), None, "all",
        fs["novel_first_label_right"] == fs["novel_episodes"])
    if fs.get("elsewhere"):
        el = fs["elsewhere"]
        n, same = sum(r["episodes"] for r in el.values()), sum(r["episodes"] - len(r["changed"]) for r in el.values())
        worst = max(el, key=lambda k: (len(el[k]["changed"]), k))
        add(f"{NOVEL} added: episodes of the other recordings raised as before", (f"{same}/{n}", worst if same < n
                                                                                  else None), None, "all", same == n)
        fr = {k: r["false_raises"] for k, r in el.items() if "false_raises" in r}   # measured since 2026-12-05
        if fr:
            extra = sum(max(a - b, 0) for b, a in fr.values())
            worst = max(fr, key=lambda k: (fr[k][1] - fr[k][0], k))
            add(f"{NOVEL} added: false raises on the other recordings beyond the shipped model's",
                (extra, worst if extra else None), None, 0, extra == 0)
    if "make_model_seconds" in res:
        add("make model wall time, s", (res["make_model_seconds"], None), None, TARGETS["make_model_s"],
            res["make_model_seconds"] <= TARGETS["make_model_s"])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    lines = ["| figure | encoder (worst recording) | expert rule | goal | pass |", "|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r["pass"] is None else ("yes" if r["pass"] else "**no**")
        where = f" ({r['worst_recording']})" if r["worst_recording"] else ""
        lines.append(f"| {r['what']} | {f(r['encoder'])}{where} | {f(r['rule'])} | {f(r['goal'])} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two recordings, short training: a smoke test")
    ap.add_argument("-o", "--output", default=None, help="results JSON (default bench/accuracy.json)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="train every leave-one-out model once per seed; figures are the worst over seeds (default: 0)")
    ap.add_argument("--models", default=None,
                    help="keep the leave-one-out models here, and reuse those already there (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="netsiam-accuracy-") as tmp:
        res = run(args.quick, Path(tmp), Path(args.models) if args.models else None, tuple(args.seeds))
    out = Path(args.output) if args.output else HERE / ("accuracy-quick.json" if args.quick else "accuracy.json")

    def write() -> None:
        out.write_text(json.dumps(res, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")

    write()                        # the measurements first: a summary that fails must not lose an hour of them
    res["summary"] = summary(res)
    write()
    print(table(res["summary"]))
    print(f"\n{out} written ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
