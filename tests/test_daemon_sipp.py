"""Real SIPp recordings through the daemon, on the real broker, with the shipped default model.

Each recording (tests/data/sipp_{a,b}_stat.csv, 15 and 50 calls/s) has four labelled fault episodes
(blocked / capacity_limit). Imported with the project's SIPp importer and replayed to Kafka, it must
give exactly one ``raised`` and one ``cleared`` per episode, naming the episode's fault, and nothing
in the normal stretches -- the same events the offline evaluation computes for the same windows --
and each ``raised`` names the inputs that left their normal range (its ``evidence``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from helpers import (
    REPO,
    check_episodes,
    detect_offline,
    events_of,
    labelled_windows,
    make_config,
    read_topic,
    running,
    trace_lines,
    value,
    wait_until,
)

from netsiam.config import DebounceConfig
from netsiam.importers.sipp import import_sipp
from netsiam.replay import replay_lines
from netsiam.schemas import load_schema
from netsiam.schemas.event import event_id
from netsiam.serving import default_model_path, load_artifact
from netsiam.traceio import read_labels
from netsiam.trainer.detection import episodes_from_intervals

DATA = REPO / "tests" / "data"


def sipp_recording(name: str) -> tuple[list[Any], list[Any]]:
    """(records, label intervals) of a recording, imported as ``netsiam import sipp`` does."""
    meta = json.loads((DATA / f"{name}_meta.json").read_text())
    return import_sipp([DATA / f"{name}_stat.csv"], meta["source"]), read_labels(DATA / f"{name}_labels.csv")


@pytest.mark.slow
@pytest.mark.skipif(not default_model_path().is_dir(), reason="no shipped model yet (make model)")
@pytest.mark.parametrize("name", ["sipp_a", "sipp_b"])
def test_real_sipp_recording_gives_one_raised_and_one_cleared_per_episode(
        broker: Any, topics: Any, name: str) -> None:
    records, labels = sipp_recording(name)
    lines = trace_lines(records)
    path: Path = default_model_path()
    art = load_artifact(path)
    episodes = episodes_from_intervals(labels)
    assert len(episodes) == 4 and {ep.label for ep in episodes} == {"blocked", "capacity_limit"}

    # what the offline evaluation computes for the very windows and encoder the daemon serves
    w, x, _, _ = labelled_windows(records, labels, art.window)
    offline, _ = detect_offline(art, art.embed(x), x, w, DebounceConfig())
    n_events = len(offline) + sum(e.cleared_at is not None for e in offline)

    replay_lines(lines, broker.bootstrap, topics.samples)
    with running(make_config(broker, topics, debounce=DebounceConfig()), path) as d:   # the shipped defaults
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= len(lines), 60, "all records consumed")
        wait_until(lambda: value(d, "netsiam_windows_embedded_total") >= len(x), 60, "all windows embedded")
        read_topic(broker.bootstrap, topics.faults, until=lambda m: len(m) >= n_events, timeout_s=60, idle_s=1.0)
        wait_until(lambda: value(d, "netsiam_events_pending") == 0, 30, "events acknowledged")
        consumed = value(d, "netsiam_records_consumed_total")
        valid = value(d, "netsiam_records_valid_total")
        embedded = value(d, "netsiam_windows_embedded_total")
    # read again once the daemon has drained and stopped: a late extra event would show here
    msgs = read_topic(broker.bootstrap, topics.faults, idle_s=0.5)
    dead = read_topic(broker.bootstrap, topics.deadletter, idle_s=0.5)
    evs = events_of(msgs)
    seen = [(e["state"], e["fault"], e["started_at"], e["window_end"]) for e in evs]

    # every record consumed once and valid: nothing dead-lettered, every window embedded once
    assert consumed == valid == len(lines), (consumed, valid, len(lines))
    assert dead == [], [orjson.loads(m.value)["reason"] for m in dead]
    assert embedded == len(x), (embedded, len(x))

    # exactly one raised + one cleared per labelled episode, with its fault; nothing in normal stretches
    assert len(evs) == 2 * len(episodes), seen
    check_episodes(evs, labels, max(r.ts for r in records), margin_s=0.0)
    for ep in episodes:
        mine = [e for e in evs if ep.start - 1 <= e["started_at"] <= ep.end]
        assert [e["fault"] for e in mine] == [ep.label, ep.label], (ep, seen)
        assert mine[0]["started_at"] == mine[1]["started_at"] and mine[0]["window_end"] < mine[1]["window_end"]
    assert all(e["source"] == records[0].source for e in evs)
    assert all(m.key == records[0].source.encode() for m in msgs)

    # event_id: one per (episode, state), deterministic
    ids = {(e["started_at"], e["state"]): e["event_id"] for e in evs}
    assert len(ids) == len(set(ids.values())) == len(evs)
    assert all(e["event_id"] == event_id(e["source"], e["fault"], e["started_at"], e["state"]) for e in evs)

    # the online path acts exactly as the offline evaluation
    assert sorted((e.source, e.fault, e.started_at, e.raised_at, e.cleared_at) for e in offline) == sorted(
        (r["source"], r["fault"], r["started_at"], r["window_end"],
         next(c["window_end"] for c in evs if c["state"] == "cleared" and c["started_at"] == r["started_at"]))
        for r in evs if r["state"] == "raised")
    assert n_events == len(evs)
    for e in evs:
        assert e["model_version"] == art.version and e["detected_at"] > e["window_end"]

    # each raise says why, in the schema's shape: a blocked path retransmits (and stops succeeding), a
    # capacity limit fails calls; each named input is outside the normal range it is shown with
    validator = jsonschema.Draft202012Validator(load_schema("event"))
    plausible = {"blocked": {"retrans_log", "success_rel", "failed_log"},
                 "capacity_limit": {"failed_log", "refused_log"}}
    for e in evs:
        validator.validate(e)
        assert (e["evidence"] != []) == (e["state"] == "raised"), e
        if e["state"] == "raised":
            assert e["evidence"][0]["feature"] in plausible[e["fault"]], e
            assert all(v["value"] < v["normal"][0] or v["value"] > v["normal"][1] for v in e["evidence"]), e
