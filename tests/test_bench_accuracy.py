"""bench.accuracy's summary over several training seeds, and the results page made from it (no training)."""

from __future__ import annotations

from typing import Any

from bench.accuracy import leave_one_out_rows, summary
from bench.results_md import render


def _det(max_delay: float, false_per_h: float = 0.0) -> dict[str, Any]:
    return {"first_label_accuracy": 1.0, "first_label_correct": 2, "episodes": 2, "raised_once": 2,
            "median_delay_s": 2.0, "max_delay_s": max_delay, "max_clear_s": 3.0, "false_raises": 0,
            "false_raises_per_hour": false_per_h, "window_accuracy": 0.99}


def _row(max_delay: float, unknown: float | None = None) -> dict[str, Any]:
    nov = {"n_windows": 10, "unknown_rate": unknown, "predicted": {}} if unknown is not None else {"n_windows": 0,
                                                                                                    "unknown_rate": None}
    return {"detectors": {"encoder": _det(max_delay), "expert_rule": _det(2.5), "raw_nearest_prototype": _det(9.0)},
            "episodes": [], "events": [], "novelty": {"degraded": nov}}


def _res() -> dict[str, Any]:
    return {
        "machine": {"cpus": 2}, "seconds": 60.0, "seeds": [0, 1],
        "corpus": {"a": {"role": "reported", "rate": 10, "hold_s": 2}, "b": {"role": "reported", "rate": 20, "hold_s": 3},
                   "n": {"role": "novel", "rate": 30, "hold_s": 4}},
        "leave_one_out": {"a": _row(4.0), "b": _row(3.0), "n": _row(2.0, unknown=0.9)},
        "leave_one_out_other_seeds": {"1": {"a": _row(5.0), "b": _row(12.0), "n": _row(2.0, unknown=0.2)}},
        "shipped": {"version": "v", "recordings": {"a": _row(2.0)}},
        "few_shot": {"examples": 10, "from": "n", "threshold": 0.6, "recordings": {}, "novel_first_label_right": 1,
                     "novel_episodes": 1, "known_first_label_right": 1, "known_episodes": 1},
    }


def _row_of(rows: list[dict[str, Any]], what: str) -> dict[str, Any]:
    return next(r for r in rows if r["what"] == what)


def test_a_figure_is_the_worst_over_recordings_and_seeds() -> None:
    res = _res()
    assert sorted(leave_one_out_rows(res)) == ["a", "a seed 1", "b", "b seed 1", "n", "n seed 1"]
    every = summary(res)
    assert _row_of(every, "leave one out: max_delay_s")["worst_recording"] == "b seed 1"
    assert _row_of(every, "leave one out: max_delay_s")["encoder"] == 12.0
    assert _row_of(every, "never-seen degraded: share of its windows unknown")["worst_recording"] == "n seed 1"
    first = summary(res, "0")
    assert (_row_of(first, "leave one out: max_delay_s")["encoder"], _row_of(first, "leave one out: max_delay_s")[
        "worst_recording"]) == (4.0, "a")


def test_a_taught_class_that_changes_other_recordings_fails_its_row() -> None:
    """A class added from few windows must leave every known episode elsewhere raised as before."""
    res = _res()
    assert not any(r["what"].endswith("raised as before") for r in summary(res))   # not measured: no row
    moved = {"label": "blocked", "before": ["blocked"], "after": ["blocked", "degraded"], "clear_s": [1.9, 30.7]}
    res["few_shot"]["elsewhere"] = {"sipp_b": {"episodes": 4, "changed": [moved, moved], "max_clear_s": [2.1, 30.7]},
                                    "r5_h30": {"episodes": 3, "changed": [], "max_clear_s": [3.0, 3.0]}}
    row = _row_of(summary(res), "degraded added: episodes of the other recordings raised as before")
    assert (row["encoder"], row["worst_recording"], row["pass"]) == ("5/7", "sipp_b", False)
    page = render(res | {"summary": summary(res)}, None)
    assert "2 other real recordings: 5/7 episodes raised as the shipped model raised them" in page
    assert "| `sipp_b` | blocked | blocked | blocked, degraded | 1.9, 30.7 |" in page
    res["few_shot"]["elsewhere"]["sipp_b"]["changed"] = []
    row = _row_of(summary(res), "degraded added: episodes of the other recordings raised as before")
    assert (row["encoder"], row["worst_recording"], row["pass"]) == ("7/7", None, True)
    # raises in the other recordings' normal traffic, beyond the shipped model's, fail their own row
    fr_row = "degraded added: false raises on the other recordings beyond the shipped model's"
    assert not any(r["what"] == fr_row for r in summary(res))   # not measured (before 2026-12-05): no row
    res["few_shot"]["elsewhere"]["sipp_b"]["false_raises"] = [1, 1]
    res["few_shot"]["elsewhere"]["r5_h30"]["false_raises"] = [0, 2]
    row = _row_of(summary(res), fr_row)
    assert (row["encoder"], row["worst_recording"], row["pass"]) == (2, "r5_h30", False)
    assert "false raises in their normal traffic: 3 (shipped model: 1)" in render(res | {"summary": summary(res)}, None)
    res["few_shot"]["elsewhere"]["r5_h30"]["false_raises"] = [0, 0]
    row = _row_of(summary(res), fr_row)
    assert (row["encoder"], row["worst_recording"], row["pass"]) == (0, None, True)


def test_the_page_shows_each_seed() -> None:
    page = render(_res() | {"summary": summary(_res())}, None)
    assert "seeds 0, 1" in page and "| seed 0 | seed 1 |" in page and "bench.accuracy --seeds 0 1`" in page
    assert "| leave one out: max_delay_s | 4.00 (a) | 12.00 (b) | 10.00 |" in page
    assert page.count("| `b` | 20, 3 |") == 2      # its row in the seed-0 and the seed-1 table
    assert "\n\n\n" not in page


def test_the_page_shows_every_candidates_probe_and_the_kept_one() -> None:
    res = _res()
    for seed, rows in (("0", res["leave_one_out"]), ("1", res["leave_one_out_other_seeds"]["1"])):
        for row in rows.values():
            row["candidates"] = [{"seed": int(seed) + i, "shift_probe": p, "val_loss": 0.03, "chosen": i == 1}
                                 for i, p in enumerate((0.25, 0.5, 0.125))]
    page = render(res | {"summary": summary(res)}, None)
    assert "| recording | seed 0: candidates 0, 1, 2 | seed 1: candidates 1, 2, 3 |" in page
    assert "| `a` | 0.25 / **0.50** / 0.12 | 0.25 / **0.50** / 0.12 |" in page
    assert "candidates" not in render(_res() | {"summary": summary(_res())}, None)


def test_the_page_names_the_cpu_it_was_measured_on() -> None:
    # the same seed trains other weights on a CPU with other vector units: the page must say which
    res = _res()
    res["machine"] |= {"cpu": "Xeon", "cpu_isa": ["avx2", "avx512f"], "platform": "Linux-x"}
    page = render(res | {"summary": summary(res)}, None)
    assert "1 minutes on 2 CPUs (Xeon; avx2 avx512f; Linux-x) in this run" in page
    assert "1 minutes on 2 CPUs (?) in this run" in render(_res() | {"summary": summary(_res())}, None)
