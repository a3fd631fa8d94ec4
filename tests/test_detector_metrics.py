"""The raised-fault series (``RaisedFaults``): what a scrape sees while the daemon raises and clears."""

from __future__ import annotations

import threading
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest

from netsiam.detector.metrics import DetectorMetrics, RaisedFaults


def scrape(c: RaisedFaults) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in c.collect()}


def test_a_raise_exports_three_series_the_clear_removes_two_and_zeroes_the_count() -> None:
    m = DetectorMetrics(CollectorRegistry())
    m.raised.set("sbc-1", "blocked", "success_rel 0.02 (normal 0.97 to 1.00)", "id-1")
    m.raised.set("sbc-2", "blocked", "", "id-2")
    got = lambda name, **labels: m.registry.get_sample_value(name, labels)  # noqa: E731
    assert got("netsiam_fault_active", source="sbc-1", fault="blocked") == 1
    assert got("netsiam_fault_evidence_info", source="sbc-1", fault="blocked",
               evidence="success_rel 0.02 (normal 0.97 to 1.00)", event_id="id-1") == 1
    assert got("netsiam_active_faults", fault="blocked") == 2
    m.raised.clear("sbc-1", "blocked")
    m.raised.clear("sbc-1", "blocked")   # a second clear changes nothing
    assert got("netsiam_fault_active", source="sbc-1", fault="blocked") is None
    assert got("netsiam_active_faults", fault="blocked") == 1
    m.raised.clear("sbc-2", "blocked")
    text = generate_latest(m.registry).decode()
    assert "netsiam_fault_active{" not in text and "netsiam_fault_evidence_info{" not in text
    assert 'netsiam_active_faults{fault="blocked"} 0.0' in text   # the count stays, at 0, as a gauge's would


def test_a_scrape_during_raises_and_clears_sees_one_consistent_state() -> None:
    c = RaisedFaults()
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            c.set(f"s{i % 500}", ("blocked", "capacity_limit")[i % 2], f"e{i}", f"id{i}")
            c.clear(f"s{(i * 7) % 500}", ("blocked", "capacity_limit")[i % 2])
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(300):
            fams = scrape(c)
            active = Counter(labels["fault"] for labels, _ in fams["netsiam_fault_active"])
            info = Counter(labels["fault"] for labels, _ in fams["netsiam_fault_evidence_info"])
            count = {labels["fault"]: v for labels, v in fams["netsiam_active_faults"]}
            assert active == info and all(count.get(f, 0) == n for f, n in active.items())
            assert sum(count.values()) == sum(active.values())
    finally:
        stop.set()
        t.join()
