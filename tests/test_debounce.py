from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from netsiam.config import DebounceConfig
from netsiam.debounce import FaultTracker

M = {"n": "normal", "b": "blocked", "c": "capacity_limit", "u": "unknown"}
CFG = DebounceConfig(raise_k=2, raise_n=3, clear_m=2, unknown_after=4, switch_after=3)


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


def test_unknown_edges_do_not_split_an_episode() -> None:
    """Edge windows far from every prototype: one episode, named by the class that settles."""
    out = run("n u u b b b b u u n n")
    assert out == [(4, "raised", "blocked", 1.0), (10, "cleared", "blocked", 1.0)]


def test_persistent_unknown_raises_unknown_after_delay() -> None:
    assert run("n u u u u u n n") == [(4, "raised", "unknown", 1.0), (7, "cleared", "unknown", 1.0)]


def test_unknown_upgrades_to_named_class_but_never_the_reverse() -> None:
    out = run("u u u u b b b n n")
    assert [o[1:3] for o in out] == [("raised", "unknown"), ("cleared", "unknown"), ("raised", "blocked"),
                                     ("cleared", "blocked")]
    assert out[2][3] == 4.0  # the named fault starts at its own first window
    assert run("b b u u u u u u n n") == [(1, "raised", "blocked", 0.0), (9, "cleared", "blocked", 0.0)]


def test_fault_change_clears_old_and_raises_new() -> None:
    out = run("b b b c c c n n")
    assert out == [(1, "raised", "blocked", 0.0), (5, "cleared", "blocked", 0.0),
                   (5, "raised", "capacity_limit", 3.0), (7, "cleared", "capacity_limit", 3.0)]


def test_flapping_between_named_classes_does_not_switch() -> None:
    assert run("b b c b c b n n") == [(1, "raised", "blocked", 0.0), (7, "cleared", "blocked", 0.0)]


def test_same_windows_same_transitions() -> None:
    seq = "n b u b b n c c c u n n n b"
    assert run(seq) == run(seq)


def test_unknown_nearest_normal_ends_a_named_fault_but_not_an_unknown_one() -> None:
    """A fault's aftermath (beyond every threshold, nearer normal than the fault) does not hold it up."""
    t = FaultTracker(CFG)
    seq = [("blocked", "blocked")] * 3 + [("unknown", "normal")] * 2 + [("normal", "normal")]
    out = [tr for i, (c, n) in enumerate(seq) for tr in t.update(c, float(i), nearest=n)]
    assert [(o.state, o.fault, o.window_end) for o in out] == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]
    # without the nearest class (or with a fault nearest) the same windows hold the fault
    t = FaultTracker(CFG)
    out = [tr for i, (c, _) in enumerate(seq) for tr in t.update(c, float(i))]
    assert [o.state for o in out] == ["raised"]
    # an active unknown is not ended by windows that are merely nearest normal: a new fault may be
    t = FaultTracker(CFG)
    out = [tr for i in range(8) for tr in t.update("unknown", float(i), nearest="normal")]
    assert [(o.state, o.fault) for o in out] == [("raised", "unknown")]


def _transitions(cfg: DebounceConfig, seq: list[tuple[str, str]]) -> list[tuple[str, str, float]]:
    t = FaultTracker(cfg)
    return [(tr.state, tr.fault, tr.window_end) for i, (c, n) in enumerate(seq) for tr in t.update(c, float(i), nearest=n)]


def test_the_aftermath_of_a_named_fault_raises_no_unknown() -> None:
    seq = [("blocked", "blocked")] * 3 + [("unknown", "normal")] * 8 + [("normal", "normal")] * 2
    seq += [("unknown", "normal")] * 8            # after plainly normal windows, a new unknown run counts again
    out = _transitions(replace(CFG, aftermath_s=0.0), seq)
    assert [(s, f) for s, f, _ in out] == [("raised", "blocked"), ("cleared", "blocked"), ("raised", "unknown")]


def test_the_aftermath_lasts_aftermath_s_after_the_clear() -> None:
    """Held calls time out long after a fault ends: plainly normal windows between them do not end the grace."""
    seq = [("blocked", "blocked")] * 3 + [("normal", "normal")] * 2            # cleared at window 4
    seq += [("normal", "normal")] * 3 + [("unknown", "normal")] * 12            # windows 5..19: inside 20 s
    cfg = replace(CFG, aftermath_s=20.0)
    assert _transitions(cfg, seq) == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]
    # past aftermath_s (and once plainly normal again) an unknown run counts as before
    later = seq + [("normal", "normal")] * 10 + [("unknown", "normal")] * 4
    assert _transitions(cfg, later)[2:] == [("raised", "unknown", 33.0)]
    # without the grace the same windows raise unknown inside it
    assert ("raised", "unknown", 11.0) in _transitions(replace(CFG, aftermath_s=0.0), seq)
    # a named fault's window ends the grace at once: what follows is judged afresh
    named = seq[:8] + [("capacity_limit", "capacity_limit")] + [("normal", "normal")] * 2 + [("unknown", "normal")] * 4
    assert _transitions(cfg, named)[2:] == [("raised", "unknown", 14.0)]


def test_windows_read_unknown_for_their_slow_answers_raise_unknown_after_slow_unknown_after() -> None:
    """The counters' own evidence (a far end answering slower than its source's level) needs no long run;
    unknown windows without it still wait ``unknown_after``, and a named fault's aftermath holds both."""
    def go(cfg: DebounceConfig, seq: list[tuple[str, str, bool]]) -> list[tuple[str, str, float]]:
        t = FaultTracker(cfg)
        return [(tr.state, tr.fault, tr.window_end) for i, (c, n, slow) in enumerate(seq)
                for tr in t.update(c, float(i), nearest=n, slow=slow)]

    cfg = replace(CFG, unknown_after=6, slow_unknown_after=2, aftermath_s=20.0)
    slow, odd, norm = ("unknown", "normal", True), ("unknown", "normal", False), ("normal", "normal", False)
    assert go(cfg, [norm] * 3 + [slow] * 4 + [norm] * 2) == [("raised", "unknown", 4.0), ("cleared", "unknown", 8.0)]
    assert go(replace(cfg, slow_unknown_after=0), [norm] * 3 + [slow] * 4 + [norm] * 2) == []   # off: as any
    # a slow window between others does not make a run; an unknown run still raises at unknown_after
    assert go(cfg, [norm] * 3 + [slow, odd] * 3) == [("raised", "unknown", 8.0)]
    # late answers after a freeze are its aftermath, not a new fault, whether nearest normal or the freeze
    after = [("blocked", "blocked", False)] * 3 + [norm] * 2 + [slow] * 6
    assert go(cfg, after) == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]
    near_fault = [("blocked", "blocked", False)] * 3 + [norm] * 2 + [("unknown", "blocked", True)] * 4
    assert go(cfg, near_fault) == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]   # not before 6


def test_a_window_whose_own_last_seconds_were_slow_completes_the_slow_run() -> None:
    """``slow`` carries the window's slow seconds in a row (in windows): that many are a run already seen,
    so the first slow window whose last ``slow_unknown_after`` seconds were all slow raises at once."""
    def go(cfg: DebounceConfig, seq: list[tuple[str, str, int]]) -> list[tuple[str, str, float]]:
        t = FaultTracker(cfg)
        return [(tr.state, tr.fault, tr.window_end) for i, (c, n, slow) in enumerate(seq)
                for tr in t.update(c, float(i), nearest=n, slow=slow)]

    cfg = replace(CFG, unknown_after=6, slow_unknown_after=3, aftermath_s=20.0)
    norm = ("normal", "normal", 0)
    assert go(cfg, [norm] * 3 + [("unknown", "normal", 3)]) == [("raised", "unknown", 3.0)]
    assert go(cfg, [norm] * 3 + [("unknown", "normal", 2), ("unknown", "normal", 3)]) == [("raised", "unknown", 4.0)]
    assert go(cfg, [norm] * 3 + [("unknown", "normal", 1)] * 3) == [("raised", "unknown", 5.0)]   # as before
    # the two counts do not add up: 2 slow seconds, then a window whose last second was not slow, is no run of 3
    two_then_fast = [("unknown", "normal", 2), ("unknown", "normal", 1), norm]
    assert go(cfg, [norm] * 3 + two_then_fast) == []
    assert go(cfg, [norm] * 3 + two_then_fast[:2] + [("unknown", "normal", 1)]) == [("raised", "unknown", 5.0)]
    # a fault's aftermath holds it all the same, however many seconds were slow
    after = [("blocked", "blocked", 0)] * 3 + [norm] * 2 + [("unknown", "normal", 9)] * 3
    assert go(cfg, after) == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]


def test_an_unknown_window_nearest_a_fault_ends_the_grace_only_after_aftermath_s() -> None:
    """The recovery after a freeze sometimes lands nearer a fault than normal for a window or two; inside
    aftermath_s that window is still anomalous, but the unknown windows nearest normal around it stay graced."""
    seq = [("blocked", "blocked")] * 3 + [("normal", "normal")] * 2            # cleared at window 4
    seq += [("unknown", "normal")] * 3 + [("unknown", "capacity_limit")] + [("unknown", "normal")] * 8
    cfg = replace(CFG, aftermath_s=20.0)                                        # grace until 24.0
    assert _transitions(cfg, seq)[2:] == []
    # past aftermath_s the same window ends the grace at once, as a named class's does
    assert _transitions(replace(CFG, aftermath_s=3.0), seq)[2:] == [("raised", "unknown", 11.0)]
    # and a run of windows nearest a fault still raises unknown inside the grace
    run_ = seq[:5] + [("unknown", "capacity_limit")] * 5
    assert _transitions(cfg, run_)[2:] == [("raised", "unknown", 8.0)]
    # ... which then ends the grace: windows merely nearest normal do not clear that unknown
    assert _transitions(cfg, run_ + [("unknown", "normal")] * 6)[2:] == [("raised", "unknown", 8.0)]


def _taught(cfg: DebounceConfig, seq: list[tuple[str, str, frozenset[str] | None]]) -> list[tuple[str, str, float]]:
    """(class, nearest trained class, thresholds within) per window; ``degraded`` is the class added after training."""
    t = FaultTracker(cfg)
    return [(tr.state, tr.fault, tr.window_end) for i, (c, n, w) in enumerate(seq)
            for tr in t.update(c, float(i), nearest=n, within=w, added=c == "degraded")]


def test_a_class_added_after_training_is_judged_as_unknown_in_another_faults_grace() -> None:
    """A class taught from a few windows (``degraded``) can claim a freeze's recovery: inside the grace its windows
    count as unknown ones nearest their nearest trained class, so the freeze is raised once and clears as before;
    past added_grace_s, and in its own aftermath, it is a named fault like any other."""
    cfg = replace(CFG, aftermath_s=20.0, added_grace_s=25.0)
    d, none = "degraded", frozenset[str]()
    freeze = [("blocked", "blocked", frozenset({"blocked"}))] * 3
    recovery = [(d, "normal", frozenset({d}))] * 10 + [(d, "blocked", frozenset({d}))] + [(d, "normal", none)] * 4
    assert _taught(cfg, freeze + recovery) == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]
    # the same windows, the rule off (or given as a trained class): switched to degraded, then held
    switched = [("raised", "blocked", 1.0), ("cleared", "blocked", 5.0), ("raised", "degraded", 5.0)]
    assert _taught(replace(cfg, added_grace_s=0.0), freeze + recovery) == switched
    assert _transitions(cfg, [(c, n) for c, n, _ in freeze + recovery]) == switched
    # nearest a trained fault, it holds the active fault as an unknown window nearest it would
    held = freeze + [(d, "blocked", none)] * 8 + [("normal", "normal", frozenset({"normal"}))] * 2
    assert _taught(cfg, held) == [("raised", "blocked", 1.0), ("cleared", "blocked", 12.0)]
    # unknown, not normal: hysteresis does not hold the fault through them, even within its threshold
    # (reading them as normal there was tried: one more false raise on the validation recordings, docs/method.md)
    both = freeze + [(d, "normal", frozenset({"normal", "blocked", d}))] * 6
    assert _taught(cfg, both) == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]
    # once the aftermath is over (plainly normal windows past aftermath_s) it is raised as it would be anywhere
    late = freeze + [("normal", "normal", frozenset({"normal"}))] * 22 + [(d, "normal", frozenset({d}))] * 3
    assert _taught(cfg, late)[2:] == [("raised", "degraded", 26.0)]
    # ... and past added_grace_s (the clear at 4.0 + 25 s) when it began inside the grace: a fault of that class
    # right after a freeze is raised late, not missed
    assert _taught(cfg, freeze + [(d, "normal", frozenset({d}))] * 40)[2:] == [("raised", "degraded", 30.0)]
    # with no fault before it, and again soon after its own episode cleared, it is raised at once
    own = [(d, "normal", frozenset({d}))] * 3 + [("normal", "normal", frozenset({"normal"}))] * 3
    own += [(d, "normal", frozenset({d}))] * 2
    assert _taught(cfg, own) == [("raised", "degraded", 1.0), ("cleared", "degraded", 4.0), ("raised", "degraded", 7.0)]


def test_hold_within_keeps_a_fault_through_windows_both_classes_claim() -> None:
    """Hysteresis: mid-fault windows nearer normal but within the active fault's threshold do not clear it."""
    seq = [("capacity_limit", {"capacity_limit"})] * 3 + [("normal", {"normal", "capacity_limit"})] * 4
    seq += [("capacity_limit", {"capacity_limit"})] * 3 + [("normal", {"normal"})] * 2

    def go(cfg: DebounceConfig) -> list[tuple[str, float]]:
        t = FaultTracker(cfg)
        return [(tr.state, tr.window_end) for i, (c, w) in enumerate(seq) for tr in t.update(c, float(i), c, w)]

    flap = go(DebounceConfig(raise_k=2, raise_n=3, clear_m=2, unknown_after=4, switch_after=3, hold_within=False))
    assert [s for s, _ in flap] == ["raised", "cleared", "raised", "cleared"]
    held = go(CFG)                                               # on by default
    assert held == [("raised", 1.0), ("cleared", 11.0)]          # one raise, cleared by plainly normal windows
    # within another fault's threshold only: normal, the active fault clears as before
    t = FaultTracker(CFG)
    out = [tr.state for i, (c, w) in enumerate([("blocked", {"blocked"})] * 3 + [("normal", {"normal", "capacity_limit"})] * 2)
           for tr in t.update(c, float(i), c, w)]
    assert out == ["raised", "cleared"]


def _released(cfg: DebounceConfig, seq: list[tuple[str, str, set[str], bool | None]]) -> list[tuple[str, str, float]]:
    t = FaultTracker(cfg)
    return [(tr.state, tr.fault, tr.window_end) for i, (c, n, w, r) in enumerate(seq)
            for tr in t.update(c, float(i), n, w, r)]


def test_inputs_back_in_range_release_a_fault_the_window_still_remembers() -> None:
    """After a freeze the counters are back within seconds, yet the 30-s window stays nearest the fault
    (beyond every threshold) for up to 9 s: with every input back in its normal range those windows count
    as normal and the fault clears; without that knowledge (None) or with release_in_range off they hold it."""
    fault = [("blocked", "blocked", {"blocked"}, False)] * 3
    memory = [("unknown", "blocked", set(), True)] * 6             # counters normal, window still remembers
    after = [("normal", "normal", {"normal"}, True)] * 2
    assert _released(CFG, fault + memory + after) == [("raised", "blocked", 1.0), ("cleared", "blocked", 4.0)]
    held = [("raised", "blocked", 1.0), ("cleared", "blocked", 10.0)]
    assert _released(replace(CFG, release_in_range=False), fault + memory + after) == held
    unknown_range = [(c, n, w, None) for c, n, w, _ in memory]
    assert _released(CFG, fault + unknown_range + after) == held
    # inputs still outside their ranges: the window is anomalous as before
    out_of_range = [(c, n, w, False) for c, n, w, _ in memory]
    assert _released(CFG, fault + out_of_range + after) == held


def test_inputs_back_in_range_end_hysteresis_but_raise_and_clear_nothing_alone() -> None:
    """A normal window within the active fault's threshold holds it only while some input is still out of
    range; in range, no fault is raised, an active unknown is not cleared and a named window still counts."""
    fault = [("capacity_limit", "capacity_limit", {"capacity_limit"}, False)] * 3
    shared = [("normal", "normal", {"normal", "capacity_limit"}, True)] * 4
    assert _released(CFG, fault + shared) == [("raised", "capacity_limit", 1.0), ("cleared", "capacity_limit", 4.0)]
    held = [(c, n, w, False) for c, n, w, _ in shared]
    assert _released(CFG, fault + held) == [("raised", "capacity_limit", 1.0)]
    # a named window in range is still that fault; an unknown run with no fault before it raises unknown
    assert _released(CFG, [("blocked", "blocked", {"blocked"}, True)] * 3)[:1] == [("raised", "blocked", 1.0)]
    assert _released(CFG, [("unknown", "blocked", set(), True)] * 6)[:1] == [("raised", "unknown", 3.0)]
    # an active unknown is not ended by in-range windows nearest a fault
    assert _released(CFG, [("unknown", "blocked", set(), False)] * 4 + [("unknown", "blocked", set(), True)] * 4) \
        == [("raised", "unknown", 3.0)]


def test_the_active_fault_s_own_windows_back_in_range_release_it_and_raise_it_no_more() -> None:
    """Held calls stop failing, yet the window is still read as the limit: back in range with none of its
    signature it counts as normal, also in the aftermath (no raise again); elsewhere it still raises."""
    fault = [("capacity_limit", "capacity_limit", {"capacity_limit"}, False)] * 3
    memory = [("capacity_limit", "capacity_limit", {"capacity_limit"}, True)] * 4
    after = [("normal", "normal", {"normal"}, True)] * 2
    off = replace(CFG, release_named=False)
    assert _released(CFG, fault + memory + after) == [("raised", "capacity_limit", 1.0), ("cleared", "capacity_limit", 4.0)]
    assert _released(off, fault + memory + after) == [("raised", "capacity_limit", 1.0),
                                                       ("cleared", "capacity_limit", 8.0)]
    # with no fault before them, named windows in range raise as any, and a fault its counters never showed
    # (every window in range) is not released: one raise, not a raise every aftermath
    assert _released(CFG, memory * 15) == [("raised", "capacity_limit", 1.0)]
    # a window showing the fault's signature is not released
    t = FaultTracker(CFG)
    sig = frozenset({"capacity_limit"})
    out = [(tr.state, tr.window_end) for i, r in enumerate([False] * 3 + [True] * 4)
           for tr in t.update("capacity_limit", float(i), "capacity_limit", {"capacity_limit"}, r, held=sig)]
    assert out == [("raised", 1.0)]


def _signed(cfg: DebounceConfig, seq: list[tuple[str, str, frozenset[str]]]) -> list[tuple[str, str, float]]:
    t = FaultTracker(cfg)
    return [(tr.state, tr.fault, tr.window_end) for i, (c, n, h) in enumerate(seq)
            for tr in t.update(c, float(i), n, {c}, False, held=h)]


def test_a_window_showing_the_active_faults_signature_holds_it() -> None:
    """Mid-limit, the encoder's window drifts back towards normal (normal, or unknown nearest normal) while
    the rejections go on: with hold_signature (on by default) those windows still carry the limit, one
    raise and one clear; without it the limit clears and is raised again."""
    on = CFG
    cap, sig = "capacity_limit", frozenset({"capacity_limit"})
    seq = ([(cap, cap, sig)] * 3 + [("unknown", "normal", sig)] * 3 + [("normal", "normal", sig)] * 3
           + [(cap, cap, sig)] * 3 + [("normal", "normal", frozenset())] * 2)
    assert _signed(on, seq) == [("raised", cap, 1.0), ("cleared", cap, 13.0)]
    assert _signed(replace(CFG, hold_signature=False), seq) == [("raised", cap, 1.0), ("cleared", cap, 4.0), ("raised", cap, 10.0),
                                 ("cleared", cap, 13.0)]
    # only the active fault's own signature holds it; an unknown window nearest another fault is anomalous anyway
    other = [(cap, cap, sig)] * 3 + [("normal", "normal", frozenset({"blocked"}))] * 2
    assert _signed(on, other)[-1] == ("cleared", cap, 4.0)
    # it raises nothing: normal windows showing a signature with no fault active stay normal
    assert _signed(on, [("normal", "normal", sig)] * 6) == []
    # an active unknown is not held by it (no named fault to carry)
    unk = [("unknown", "blocked", sig)] * 4 + [("normal", "normal", sig)] * 2
    assert _signed(on, unk) == [("raised", "unknown", 3.0), ("cleared", "unknown", 5.0)]


def test_an_unknown_window_nearest_a_fault_that_shows_its_signature_is_that_fault_unless_one_is_active() -> None:
    """At a limit's onset the encoder's window is nearest the limit but beyond its threshold while the
    rejections already show: with name_on_signature (on by default) it counts as the limit, raised two
    windows sooner. Only its own signature does it, and it never switches another active fault."""
    cap, sig, none = "capacity_limit", frozenset({"capacity_limit"}), frozenset[str]()
    tail = [(cap, cap, sig)] * 2 + [("normal", "normal", none)] * 2
    onset = [("unknown", cap, sig)] * 2 + tail
    assert _signed(CFG, onset) == [("raised", cap, 1.0), ("cleared", cap, 5.0)]
    assert _signed(replace(CFG, name_on_signature=False), onset) == [("raised", cap, 3.0), ("cleared", cap, 5.0)]
    # no signature shown, or another fault's: the unknown windows stay unknown
    assert _signed(CFG, [("unknown", cap, none)] * 2 + tail)[0] == ("raised", cap, 3.0)
    assert _signed(CFG, [("unknown", cap, frozenset({"blocked"}))] * 2 + tail)[0] == ("raised", cap, 3.0)
    # never a switch: a freeze's held calls failing late show a limit's signature while the freeze is raised
    late = [("blocked", "blocked", none)] * 3 + [("unknown", cap, sig)] * 6 + [("normal", "normal", none)] * 2
    assert _signed(CFG, late) == [("raised", "blocked", 1.0), ("cleared", "blocked", 10.0)]


def _marked(cfg: DebounceConfig, seq: list[tuple[str, str, frozenset[str]]], added: bool = False
            ) -> list[tuple[str, str, float]]:
    t = FaultTracker(cfg)
    return [(tr.state, tr.fault, tr.window_end) for i, (c, n, m) in enumerate(seq)
            for tr in t.update(c, float(i), n, {c} - {"unknown"}, False, added=added, marked=m)]


def test_a_window_showing_one_faults_mark_is_that_fault_with_name_on_mark() -> None:
    """A limit that begins as a freeze clears: the encoder's windows, still full of the freeze, are unknown
    and nearest normal (the freeze's aftermath: counted as normal) or still blocked, while the rejections
    already show. With name_on_mark (the default) they are the limit: raised from the aftermath at its second
    window, switched from an active freeze after switch_after; without it, neither."""
    cap, b, mk, none = "capacity_limit", "blocked", frozenset({"capacity_limit"}), frozenset[str]()
    on, off = replace(CFG, name_on_mark=True), replace(CFG, name_on_mark=False)
    assert CFG.name_on_mark
    freeze, calm = [(b, b, none)] * 3 + [("normal", "normal", none)] * 2, [("normal", "normal", none)] * 2
    after = freeze + [("unknown", "normal", mk)] * 4 + calm
    assert _marked(on, after) == [("raised", b, 1.0), ("cleared", b, 4.0), ("raised", cap, 6.0), ("cleared", cap, 10.0)]
    assert _marked(off, after) == [("raised", b, 1.0), ("cleared", b, 4.0)]
    during = [(b, b, none)] * 3 + [(b, b, mk)] * 6 + calm
    assert _marked(on, during) == [("raised", b, 1.0), ("cleared", b, 5.0), ("raised", cap, 5.0), ("cleared", cap, 10.0)]
    assert _marked(off, during) == [("raised", b, 1.0), ("cleared", b, 10.0)]
    # a normal window with no fault before it too: the counters name the fault (why a mark on a count of
    # calls must be beyond chance: netsiam.evidence.marks_counted)
    assert _marked(on, [("normal", "normal", mk)] * 2 + calm) == [("raised", cap, 1.0), ("cleared", cap, 3.0)]
    # two faults' marks at once name neither; a class added after training keeps its own name
    assert _marked(on, [("normal", "normal", mk | {b})] * 4) == []
    assert _marked(on, [("degraded", "blocked", mk)] * 2, added=True) == [("raised", "degraded", 1.0)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(M.values())), st.sampled_from(sorted(M.values())),
                          st.frozensets(st.sampled_from(sorted(M.values())))), max_size=60),
       st.sampled_from([CFG, replace(CFG, raise_k=1, raise_n=1), replace(CFG, raise_k=3, raise_n=5, clear_m=1),
                        replace(CFG, hold_within=False, aftermath_s=0.0)]))
def test_no_fault_active_means_no_named_majority_so_update_may_skip_counting(
        windows: list[tuple[str, str, frozenset[str]]], cfg: DebounceConfig) -> None:
    """update() skips the majority count for a normal or unknown window while nothing is active; exact
    only because no window ever leaves a named majority behind without a fault active."""
    t = FaultTracker(cfg)
    for i, (cls, nearest, within) in enumerate(windows):
        t.update(cls, float(i), nearest, within)
        if t.active is None:
            assert t._named_majority() is None
