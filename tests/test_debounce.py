from __future__ import annotations

from netsiam.config import DebounceConfig
from netsiam.debounce import FaultTracker

M = {"n": "normal", "b": "blocked", "c": "capacity_limit", "u": "unknown"}


CFG = DebounceConfig(raise_k=2, raise_n=3, clear_m=2)


def run(seq: str, cfg: DebounceConfig = CFG) -> list[tuple]:
    t = FaultTracker(cfg)
    out = []
    for i, s in enumerate(seq.split()):
        out += [(i, tr.state, tr.fault, tr.started_at) for tr in t.update(M[s], float(i))]
    return out


def test_single_blip_does_not_raise() -> None:
    assert run("n n b n n n b n n") == []


def test_raise_once_and_clear_once_per_episode() -> None:
    assert run("n n b b b b b n n n") == [(3, "raised", "blocked", 2.0), (8, "cleared", "blocked", 2.0)]


def test_k_of_n_with_a_gap_and_start_is_first_anomalous_window() -> None:
    assert run("n b n b b n n") == [(3, "raised", "blocked", 1.0), (6, "cleared", "blocked", 1.0)]


def test_one_normal_window_inside_an_episode_does_not_clear() -> None:
    assert run("b b b n b b n n") == [(1, "raised", "blocked", 0.0), (7, "cleared", "blocked", 0.0)]


def test_fault_change_clears_old_and_raises_new() -> None:
    out = run("b b b c c c n n")
    assert out == [(1, "raised", "blocked", 0.0), (4, "cleared", "blocked", 0.0),
                   (4, "raised", "capacity_limit", 3.0), (7, "cleared", "capacity_limit", 3.0)]


def test_unknown_counts_as_anomalous_and_majority_names_the_fault() -> None:
    assert run("u u b n n")[0][:3] == (1, "raised", "unknown")
    assert run("b u n n")[0][:3] == (1, "raised", "blocked")  # 1:1 tie -> the named class
    assert run("c b n n")[0][:3] == (1, "raised", "blocked")  # 1:1 tie of named classes -> most recent
