"""``python -m bench.results_md``: write docs/results.md from bench/accuracy.json and bench/results.json.

The page is generated so that every figure on it is the one the named command measured; the prose
around the tables lives here, not in the page.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from bench.accuracy import (
    NOVEL,
    OLD_RECORDINGS,
    TARGETS,
    leave_one_out_rows,
    leave_one_out_sets,
    summary,
    table,
)

__all__ = ["main", "render"]

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "results.md"
DETS = (("encoder", "encoder"), ("expert_rule", "expert rule"), ("raw_nearest_prototype", "raw prototype"))


def _n(v: Any, digits: int = 1) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _det(d: dict[str, Any]) -> str:
    """first right / episodes, raised once, median/max delay, max clear, false raises."""
    return (f"{d['first_label_correct']}/{d['episodes']}, {d['raised_once']}, "
            f"{_n(d['median_delay_s'])}/{_n(d['max_delay_s'])}, {_n(d['max_clear_s'])}, {d['false_raises']}")


def recordings_table(rows: dict[str, Any], corpus: dict[str, Any]) -> str:
    head = ["| recording | calls/s, hold s | " + " | ".join(name for _, name in DETS) + " | window accuracy enc / raw |",
            "|---|---|" + "---|" * len(DETS) + "---|"]
    for name, r in rows.items():
        meta = corpus.get(name)
        load = f"{_n(meta['rate'], 0)}, {_n(meta['hold_s'], 1)}" if meta else "older recorder"
        d = r["detectors"]
        cells = [_det(d[k]) if k in d else "-" for k, _ in DETS]
        acc = f"{_n(d['encoder']['window_accuracy'], 3)} / {_n(d.get('raw_nearest_prototype', {}).get('window_accuracy'), 3)}"
        head.append(f"| `{name}` | {load} | " + " | ".join(cells) + f" | {acc} |")
    return "\n".join(head)


def _novelty(res: dict[str, Any]) -> str:
    lines = ["| model | recording | `degraded` windows | called unknown | its episodes first raised as |",
             "|---|---|---|---|---|"]
    for model, rows in (("leave one out", leave_one_out_rows(res)), ("shipped", res["shipped"]["recordings"])):
        for name, r in rows.items():
            nv = r["novelty"].get(NOVEL)
            if not nv or not nv["n_windows"]:   # a recording without the never-seen fault says nothing here
                continue
            first = ", ".join(str(e["detected_label"]) for e in r["episodes"] if e["label"] == NOVEL)
            lines.append(f"| {model} | `{name}` | {nv['n_windows']} | {_n(nv['unknown_rate'], 2)} | {first} |")
    return "\n".join(lines)


def _trainings(res: dict[str, Any]) -> str:
    t = res.get("trainings")
    if t and t["reused"]:
        return (f"{t['reused']} of {t['reused'] + t['trained']} leave-one-out models found already trained in "
                "`--models DIR` (training them all takes ~52 minutes side by side on 2 cores, ~100 one at a time)")
    return "most of it the leave-one-out trainings; `--models DIR` keeps them for a re-run"


def _few_shot(fs: dict[str, Any]) -> str:
    lines = [f"`{NOVEL}` added to the shipped model from {fs['examples']} windows ({fs['from']}), no retraining "
             f"(threshold {fs['threshold']}): other `{NOVEL}` episodes first raised `{NOVEL}`: "
             f"**{fs['novel_first_label_right']}/{fs['novel_episodes']}**; known-fault episodes still right: "
             f"{fs['known_first_label_right']}/{fs['known_episodes']}.", "",
             "| recording | episode | first raised | every raise | delay s |", "|---|---|---|---|---|"]
    for name, r in fs["recordings"].items():
        for e in r["episodes"]:
            lines.append(f"| `{name}` | {e['label']} | {e['detected_label']} | {', '.join(e['raised']) or '-'} "
                         f"| {_n(e['delay_s'])} |")
    el = fs.get("elsewhere")
    if el:
        n = sum(r["episodes"] for r in el.values())
        changed = [(name, c) for name, r in el.items() for c in r["changed"]]
        fr = [r["false_raises"] for r in el.values() if "false_raises" in r]
        lines += ["", f"The taught model on the {len(el)} other real recordings: {n - len(changed)}/{n} episodes "
                      f"raised as the shipped model raised them"
                      + (f"; false raises in their normal traffic: {sum(a for _, a in fr)} (shipped model: "
                         f"{sum(b for b, _ in fr)})." if fr else ".")]
        if changed:
            lines += ["", "| recording | episode | shipped model raised | taught model raised | clear s (shipped, taught) |",
                      "|---|---|---|---|---|"]
            lines += [f"| `{name}` | {c['label']} | {', '.join(c['before']) or '-'} | {', '.join(c['after']) or '-'} "
                      f"| {_n(c['clear_s'][0])}, {_n(c['clear_s'][1])} |" for name, c in changed]
    return "\n".join(lines)


def _machine(m: dict[str, Any]) -> str:
    """"2 CPUs (Intel(R) Xeon(R) Processor; avx2 fma avx512f ...; Linux-...)": results from before the CPU was
    recorded name the CPUs and platform only."""
    isa = " ".join(m.get("cpu_isa", []))
    what = "; ".join(x for x in (m.get("cpu"), isa, m.get("platform")) if x)
    return f"{m.get('cpus', '?')} CPUs ({what or '?'})"


def _throughput(bench: dict[str, Any]) -> str:
    keys = ("e2e_ratio", "p99_latency_ms", "embed_ratio", "max_sources_1hz", "gpu_embed_ratio", "torch_cpu_embed_ratio",
            "train_seconds")
    rows = ["| key in bench/results.json | value |", "|---|---|"]
    rows += [f"| `{k}` | {_n(bench.get(k), 2)} |" for k in keys if k in bench]
    when = bench.get("machine", {})
    return "\n".join(rows) + (f"\n\nMeasured on {_machine(when)}." if when else "")


def _by_seed(res: dict[str, Any]) -> str:
    """The leave-one-out targets, one column per training seed: how much of a figure is the seed's."""
    seeds = list(leave_one_out_sets(res))
    cols = {s: {r["what"]: r for r in summary(res, s)} for s in seeds}
    lines = ["| figure (worst recording) | " + " | ".join(f"seed {s}" for s in seeds) + " | goal |",
             "|---|" + "---|" * len(seeds) + "---|"]
    for r in res["summary"]:
        if not r["what"].startswith(("leave one out", "never-seen")):
            continue
        cells = []
        for s in seeds:
            c = cols[s][r["what"]]
            where = f" ({c['worst_recording'].split(' seed ')[0]})" if c["worst_recording"] else ""
            cells.append(f"{_n(c['encoder'], 2)}{where}")
        lines.append(f"| {r['what']} | " + " | ".join(cells) + f" | {_n(r['goal'], 2)} |")
    return "\n".join(lines)


def _candidates(res: dict[str, Any]) -> str:
    """Per recording and seed: every candidate's input-shift probe, the kept one in bold ("" without candidates)."""
    sets = leave_one_out_sets(res)
    first = {s: next((r["candidates"] for r in rows.values() if "candidates" in r), None) for s, rows in sets.items()}
    if not any(first.values()):
        return ""
    lines = ["| recording | " + " | ".join(f"seed {s}: candidates {', '.join(str(c['seed']) for c in cands or [])}"
                                            for s, cands in first.items()) + " |",
             "|---|" + "---|" * len(sets)]
    for n in next(iter(sets.values())):
        cells = [" / ".join(f"**{_n(c['shift_probe'], 2)}**" if c["chosen"] else _n(c["shift_probe"], 2)
                            for c in rows.get(n, {}).get("candidates", [])) or "-" for rows in sets.values()]
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    k = max(len(c or []) for c in first.values())
    return (f"Each training is the shipped recipe's: {k} candidates (seeds S to S+{k - 1}, `training.candidates`), "
            "the one whose input-shift probe scores highest kept ([method.md](method.md#encoder-and-training-trainer)). "
            "Every candidate's probe, the kept one in bold:\n\n" + "\n".join(lines))


def _seeds_text(res: dict[str, Any]) -> str:
    seeds = list(leave_one_out_sets(res))
    if len(seeds) == 1:
        return (f"Each leave-one-out figure comes from one training (seed {seeds[0]}). Retrained with another seed, "
                "the same recipe moves the worst figures a lot ([method.md](method.md#encoder-and-training-trainer)).\n\n"
                + _candidates(res))
    return (f"Every leave-one-out model was trained {len(seeds)} times, with seeds {', '.join(seeds)} "
            f"(`--seeds`); a figure above is the worst over recordings and seeds (`r40_h5_b2b seed {seeds[1]}`: "
            f"that recording's seed-{seeds[1]} training). One training per recording says as much about the seed as about the "
            "recipe; the same targets seed by seed:\n\n" + _by_seed(res) + "\n\n" + _candidates(res))


def render(res: dict[str, Any], bench: dict[str, Any] | None) -> str:
    sets = leave_one_out_sets(res)
    shipped = res["shipped"]["recordings"]
    corpus = res["corpus"]
    order = [n for n in shipped if n in OLD_RECORDINGS] + [n for n in shipped if n not in OLD_RECORDINGS]
    parts = [
        "# Results",
        "",
        "Generated by `python -m bench.results_md` from `bench/accuracy.json` (`python -m bench.accuracy"
        + ("" if len(sets) < 2 else " --seeds " + " ".join(sets)) + "`: "
        f"{res['seconds'] / 60:.0f} minutes on {_machine(res['machine'])} in this run, " + _trainings(res)
        + ") and `bench/results.json` (`make bench`).",
        "",
        "**How figures were chosen.** Recipes, thresholds, debounce settings and the expert rule's bounds were "
        "chosen on the corpus's validation recordings (`val_*`, and `unseen_*`, which no model trains on; "
        "`python -m bench.realtraffic --select`) only. Every recording the targets are judged on is either held "
        "out of training (leave one recording out) or, for the shipped model, one it never trained on "
        "(`sipp_a`, `sipp_b`, `sipp_c`, made with another recorder); none was used for a choice. The shipped "
        "model's table also shows the validation recordings, which the targets leave out. The worst recording "
        "counts.",
        "",
        "**How events are judged** (as an operator does): an episode's first raised fault must be its label "
        "(`unknown` for a fault the model never learnt), raised once, soon after the fault began, cleared soon "
        "after it ended; a raise outside every episode is a false raise. Each row reads: first raise right / "
        "episodes, episodes raised exactly once, median/max delay s, max clear s after the end, false raises.",
        "",
        "## Against the targets",
        "",
        table(res["summary"]),
        "",
        f"Targets: median delay ≤ {TARGETS['median_delay_s']:.0f} s, none over {TARGETS['max_delay_s']:.0f} s, "
        f"cleared within {TARGETS['max_clear_s']:.0f} s, first raise right on every episode, no false raise, "
        f"within {TARGETS['delay_vs_rule_s']:.0f} s of the expert rule's median delay. Delays count every "
        "episode, a never-seen fault's `unknown` raise included (`unknown` waits for 10 anomalous windows by "
        "design; 3 in a row read `unknown` and answered slowly, or one whose last 3 seconds each were): `sipp_c`'s "
        "shipped-model delays are its never-seen fault's.",
        "",
        "What the counters allow: a capacity limit that holds the calls it refuses until the caller gives up "
        "leaves every SIPp counter as in normal traffic until the first held call times out, and its held calls "
        "go on failing that long after it ends. In `r12_h15` (an 8-s caller timeout; "
        "`deploy/testbed/corpus/r12_h15_stat.csv.gz`) the first limit's first failure is in the sample 9.1 s "
        "after the episode starts and its last 8.3 s after it ends: a detector that confirms over two seconds "
        "cannot raise before ~10.1 s or clear before ~10.3 s there (the expert rule: 10.2 and 10.4), so the max "
        "delay and max clear targets cannot be met on that recording by the encoder or the rule.",
        "",
        _seeds_text(res),
        "",
        "Training repeats exactly on one machine (the same seed gives the same weights, "
        "`tests/test_train.py`), not across CPUs: TensorFlow's kernels round differently on other vector "
        "units, so the same seed trains other weights, hence other worst cases, on another CPU (this run's "
        "CPU is named above).",
        "",
        "## Leave one recording out (reported recordings)",
        "",
        "A model trained on every other recording plus the default simulation, judged on the held-out one "
        "beside the per-second expert rule and the raw nearest-prototype baseline through the same debounce.",
        "",
        *[part for seed, rows in sets.items()
          for part in (f"Seed {seed}:" if len(sets) > 1 else "", "",
                       recordings_table({n: v for n, v in rows.items() if corpus[n]["role"] == "reported"}, corpus), "")],
        "## The shipped model as is, on every real recording",
        "",
        f"Model version `{res['shipped']['version']}`. It trained on the corpus's recordings but the novel and `unseen_` ones, so "
        "the rows of those it trained on show fit, not generalisation; the `novel_*` and `unseen_*` "
        "recordings and `sipp_a`, `sipp_b`, `sipp_c` it never saw.",
        "",
        recordings_table({n: shipped[n] for n in order}, corpus),
        "",
        f"## A fault it never saw: `{NOVEL}`",
        "",
        "No model here was trained on a `degraded` window: the leave-one-out models, and the shipped model, on "
        "the two novel recordings:",
        "",
        _novelty(res),
        "",
        "## A new class from a few windows",
        "",
        _few_shot(res["few_shot"]),
    ]
    if "make_model_seconds" in res:
        parts += ["", f"`make model` (the shipped model from scratch): {res['make_model_seconds']:.0f} s on "
                      f"{res['machine']['cpus']} CPUs."]
    if bench:
        parts += ["", "## Throughput (`make bench`)", "", _throughput(bench),
                  "", "Measured on the shared 2-core machine under load; what each key measures and how: "
                      "[`docs/throughput.md`](throughput.md)."]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts)) + "\n"   # no double blank line where a part is empty


README = HERE.parent / "README.md"
MARK = ("<!-- results: python -m bench.results_md -->", "<!-- /results -->")
BENCH_TARGETS = (("e2e_ratio", "≥ 0.8 of a bare consumer"), ("p99_latency_ms", "≤ 250 ms"),
                 ("embed_ratio", "≥ 1.2 of Keras predict_on_batch"), ("max_sources_1hz", "≥ 20,000"),
                 ("gpu_embed_ratio", "≥ 0.7 of raw cuDNN"), ("train_seconds", "≤ 180 s"))


def readme_table(res: dict[str, Any], bench: dict[str, Any] | None) -> str:
    """The short table README shows: the worst reported recording per target, the rule beside it."""
    lines = ["| figure (worst recording) | encoder | expert rule | target |", "|---|---|---|---|"]
    for r in res["summary"]:
        if r["what"].startswith("shipped"):
            continue                  # the shipped model's rows (partly fit, not generalisation) stay in docs/
        where = f" (`{r['worst_recording']}`)" if r["worst_recording"] else ""
        lines.append(f"| {r['what']}{where} | {_n(r['encoder'], 2)} | {_n(r['rule'], 2)} | {_n(r['goal'], 2)} |")
    for key, goal in BENCH_TARGETS if bench else ():
        lines.append(f"| `make bench`: {key} | {_n(bench.get(key), 2) if bench else '-'} | | {goal} |")
    return "\n".join(lines)


def _splice(text: str, block: str) -> str:
    start, end = text.index(MARK[0]), text.index(MARK[1])
    return text[:start] + MARK[0] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accuracy", default=str(HERE / "accuracy.json"))
    ap.add_argument("--bench", default=str(HERE / "results.json"))
    ap.add_argument("-o", "--output", default=str(DOC))
    args = ap.parse_args(argv)
    res = json.loads(Path(args.accuracy).read_text())
    bench_path = Path(args.bench)
    bench = json.loads(bench_path.read_text()) if bench_path.exists() else None
    Path(args.output).write_text(render(res, bench))
    README.write_text(_splice(README.read_text(), readme_table(res, bench)))
    print(f"{args.output} and README.md's results table written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
