from __future__ import annotations

import json
import math
from dataclasses import asdict, fields, replace
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsiam.errors import NetsiamError
from netsiam.evidence import K
from netsiam.features import RAW_METRICS
from netsiam.schemas import load_schema
from netsiam.schemas import record as record_mod
from netsiam.schemas.deadletter import DeadLetter, validate_dead_letter
from netsiam.schemas.event import FaultEvent, event_id
from netsiam.schemas.labels import parse_label_row
from netsiam.schemas.record import REASONS, RecordError, decode_record, validate_record_obj

NAMES = RAW_METRICS
REQ = frozenset(RAW_METRICS)
GOOD = {"source": "sbc-1", "ts": 1795384097.5, "metrics": {m: 1 for m in RAW_METRICS}}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def reason_of(raw: bytes, max_bytes: int = 65536) -> str:
    with pytest.raises(RecordError) as e:
        decode_record(raw, NAMES, REQ, max_bytes)
    return e.value.reason


def test_valid_record_decodes_in_feature_order() -> None:
    obj = dict(GOOD, metrics={**GOOD["metrics"], "OutgoingCall": 30, "Extra": 5})
    r = decode_record(enc(obj), NAMES, REQ)
    assert r.source == "sbc-1" and r.ts == 1795384097.5
    assert r.values[0] == 30.0 and len(r.values) == len(NAMES)


def test_rfc3339_timestamp_accepted() -> None:
    r = decode_record(enc(dict(GOOD, ts="2026-11-22T10:28:17.5Z")), NAMES, REQ)
    assert r.ts == pytest.approx(1795343297.5)


def test_not_required_metric_defaults_to_zero() -> None:
    metrics = {m: 1 for m in RAW_METRICS if m != "ResponseTime1"}
    r = decode_record(enc(dict(GOOD, metrics=metrics)), NAMES, frozenset(metrics))
    assert r.values[NAMES.index("ResponseTime1")] == 0.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b'{"source": "a", "ts": 1', "not_json"),
        (enc([1, 2, 3]), "schema"),
        (enc({"ts": 1, "metrics": {}}), "schema"),
        (enc(dict(GOOD, source="")), "schema"),
        (enc(dict(GOOD, source=7)), "schema"),
        (enc(dict(GOOD, source="\ud800x")), "schema"),     # a lone surrogate: not a Kafka key, not JSON out
        (enc({"source": "a", "metrics": {}}), "schema"),
        (enc(dict(GOOD, metrics=[1])), "schema"),
        (enc(dict(GOOD, metrics={**GOOD["metrics"], "OutgoingCall": "3"})), "schema"),
        (enc(dict(GOOD, metrics={**GOOD["metrics"], "OutgoingCall": True})), "schema"),
        (enc(dict(GOOD, metrics={m: 1 for m in RAW_METRICS[1:]})), "missing_feature"),
        (b'{"source":"a","ts":1,"metrics":{"OutgoingCall":NaN}}', "non_finite"),
        (b'{"source":"a","ts":1,"metrics":{"OutgoingCall":Infinity}}', "non_finite"),
        (b'{"source":"a","ts":1,"metrics":{"OutgoingCall":1e999}}', "non_finite"),
        (b'{"source":"a","ts":NaN,"metrics":{}}', "non_finite"),
        (b'{"source":"a","ts":1,"metrics":{"OutgoingCall":1e308}}', "non_finite"),
        (b'{"source":"a","ts":1,"metrics":{"OutgoingCall":1' + b"0" * 400 + b'}}', "non_finite"),
        (enc(dict(GOOD, metrics={**GOOD["metrics"], "FailedCall": -1})), "negative_counter"),
        (enc(dict(GOOD, ts="yesterday")), "bad_timestamp"),
        (enc(dict(GOOD, ts=-5)), "bad_timestamp"),
        (enc(dict(GOOD, ts=1e12)), "bad_timestamp"),
        (enc(dict(GOOD, ts="2026-11-22T10:28:17")), "bad_timestamp"),
        (enc(dict(GOOD, ts=None)), "bad_timestamp"),
        (b'{"source":"a","ts":1' + b"0" * 400 + b',"metrics":{}}', "bad_timestamp"),
    ],
)
def test_each_rejection_has_its_reason(raw: bytes, reason: str) -> None:
    assert reason_of(raw) == reason


@pytest.mark.parametrize("bad", [9.223372036854776e18, -1, "n/a", True, 10**400])
def test_a_metric_the_model_does_not_use_is_ignored_and_counted(bad: object) -> None:
    """SIPp's int64 sentinel (and any out-of-range value) in a metric the model never reads loses nothing."""
    raw = json.dumps({**GOOD, "metrics": {**GOOD["metrics"], "CallLengthStDev": bad}}).encode()
    r = decode_record(raw, NAMES, REQ)
    assert r.ignored == 1 and r.values == tuple(1.0 for _ in NAMES)


def test_an_out_of_range_metric_the_model_uses_is_refused_even_if_decoded() -> None:
    metrics = {**GOOD["metrics"], "CurrentCall": -2}
    assert reason_of(enc(dict(GOOD, metrics=metrics))) == "negative_counter"
    # decoded but not required: left at 0.0 and counted
    r = decode_record(enc(dict(GOOD, metrics=metrics)), NAMES, REQ - {"CurrentCall"})
    assert r.ignored == 1 and r.values[NAMES.index("CurrentCall")] == 0.0


def test_oversized_message_rejected_before_parsing() -> None:
    assert reason_of(enc(GOOD), max_bytes=10) == "too_large"


def test_deeply_nested_json_is_rejected_not_crashing() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    assert reason_of(raw, max_bytes=10**6) in ("not_json", "schema")
    # nested under a key the struct does not know (msgspec recurses to skip it) or in a metric
    for tail in (b'}, "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"):
        raw = enc(GOOD)[:-2] + tail
        assert reason_of(raw, max_bytes=10**6) in ("not_json", "schema")


def test_every_reason_is_a_known_label() -> None:
    assert len(set(REASONS)) == len(REASONS)
    with pytest.raises(AssertionError):
        RecordError("made_up", "x")


# The fast decoder must agree with the JSON Schema file on shape (jsonschema is the reference).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(-1e6, 1e6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "source": st.one_of(st.text(min_size=0, max_size=6), st.integers()),
        "ts": st.one_of(st.floats(0, 4e9), st.integers(-5, 4 * 10**9), st.text(max_size=3)),
        "metrics": st.one_of(
            st.dictionaries(st.sampled_from(RAW_METRICS + ("x",)),
                            st.one_of(st.integers(-3, 100), st.floats(-3, 100), st.booleans(), st.text(max_size=2)),
                            max_size=7),
            json_values,
        ),
    },
)


@settings(max_examples=400, deadline=None)
@given(records)
def test_fast_validator_agrees_with_json_schema(obj: dict) -> None:
    validator = jsonschema.Draft202012Validator(load_schema("record"))
    schema_ok = validator.is_valid(obj)
    try:
        decode_record(enc(obj), NAMES, frozenset())
        fast_ok = True
    except RecordError as e:
        fast_ok = False
        assert e.reason in ("schema", "negative_counter", "bad_timestamp", "non_finite"), e
    if isinstance(obj.get("ts"), str):
        # the schema's date-time format is advisory in jsonschema; the decoder parses it strictly
        assert not fast_ok or schema_ok
    else:
        assert fast_ok == schema_ok, obj


def outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except RecordError as e:
        return (e.reason, e.detail)


numbers = st.one_of(st.integers(-3, 10**6), st.floats(-3, 1e6), st.sampled_from([0, -0.0, 1e15, 1e15 + 0.5, 10**15 + 1,
                                                                                  2**63, 10**400, 9.223372036854776e18]))
edge_records = st.fixed_dictionaries(
    {"source": st.one_of(st.text(min_size=0, max_size=3), st.just("\u00e9" * 256), st.just("\u00e9" * 257)),
     "ts": st.one_of(st.floats(-1, 5e9), st.integers(-5, 5 * 10**9), st.sampled_from(["2026-11-22T10:28:17Z", "1.5e9",
                                                                                   "x", True, None])),
     # every metric present, mostly in range, so that most examples take the one-call path
     "metrics": st.fixed_dictionaries({m: st.one_of(st.integers(0, 10**6), st.floats(0, 1e6), numbers) for m in RAW_METRICS},
                                      optional={"CallLengthStDev": st.one_of(numbers, st.booleans(), st.none())})},
    optional={"extra": st.integers()},
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(records, edge_records), st.sampled_from([frozenset(), REQ, frozenset(RAW_METRICS[:3])]))
def test_the_one_call_path_decodes_as_the_checks_do(obj: dict, required: frozenset[str]) -> None:
    """Whatever the bytes, decode_record (msgspec first) gives what orjson + the hand-written checks give:
    the same record, or the same reason and detail."""
    raw = json.dumps(obj).encode()
    assert outcome(decode_record, raw, NAMES, required) == outcome(
        lambda: validate_record_obj(record_mod._loads(raw), NAMES, required))


def test_a_well_formed_record_takes_the_one_call_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(*_: object) -> None:
        raise AssertionError("the hand-written checks ran")

    monkeypatch.setattr(record_mod, "validate_record_obj", slow)
    r = decode_record(enc(dict(GOOD, metrics={**GOOD["metrics"], "Other": 3})), NAMES, REQ)
    assert r == (GOOD["source"], GOOD["ts"], tuple(1.0 for _ in NAMES), 0)
    many = {**{f"m{i}": 1 for i in range(600)}, **GOOD["metrics"]}
    # the checks' failure comes back as a RecordError naming it (decode_record raises nothing else)
    with pytest.raises(RecordError, match="AssertionError: the hand-written"):   # over MAX_METRICS: checks say why
        decode_record(enc(dict(GOOD, metrics=many)), NAMES, REQ)
    with pytest.raises(RecordError, match="AssertionError: the hand-written"):   # a sentinel elsewhere, too
        decode_record(enc(dict(GOOD, metrics={**GOOD["metrics"], "Other": 9.223372036854776e18})), NAMES, REQ)


def test_event_roundtrip_validates_against_schema_and_ids_are_deterministic() -> None:
    ev = FaultEvent("sbc-1", "raised", "blocked", 1795384140.0, 1795384140.2, 1795384120.0, 0.07,
                    {"normal": 0.61, "blocked": 0.07}, (0.1, 0.9, 0.2), "v1")
    obj = json.loads(ev.to_bytes())
    jsonschema.validate(obj, load_schema("event"))
    assert obj["event_id"] == event_id("sbc-1", "blocked", 1795384120.0, "raised")
    assert obj["evidence"] == []   # no evidence given: still the required (empty) array
    # with evidence, as the daemon sends a raise (at most netsiam.evidence.K items)
    why = ({"feature": "success_rel", "value": 0.02, "normal": [0.19, 1.93]},
           {"feature": "retrans_log", "value": 4.61, "normal": [0.0, 0.38]})
    raised = json.loads(replace(ev, evidence=why).to_bytes())
    jsonschema.validate(raised, load_schema("event"))
    # to_json spells the fields out: every field, in declaration order, after the id (a new field must be added there)
    assert list(raised) == ["event_id", *(f.name for f in fields(FaultEvent))]
    assert raised == {"event_id": obj["event_id"], **json.loads(json.dumps(asdict(replace(ev, evidence=why))))}
    assert raised["evidence"] == [dict(e) for e in why] and raised["event_id"] == obj["event_id"]
    validator = jsonschema.Draft202012Validator(load_schema("event"))
    assert validator.schema["properties"]["evidence"]["maxItems"] == K
    old = {k: v for k, v in raised.items() if k != "evidence"}   # the contract: events carry it
    for bad in (old, {**raised, "evidence": [{"feature": "success_rel", "value": 0.02}]},
                {**raised, "evidence": [{**why[0], "normal": [0.19]}]},
                {**raised, "evidence": [{**why[0], "value": "low"}]},
                {**raised, "evidence": [{**why[0], "extra": 1}]}, {**raised, "evidence": [why[0]] * (K + 1)}):
        assert not validator.is_valid(bad), bad
    again = FaultEvent("sbc-1", "raised", "blocked", 1795384999.0, 1795385000.0, 1795384120.0, 0.5)
    assert again.event_id == ev.event_id  # same source + fault + start -> same id
    cleared = FaultEvent("sbc-1", "cleared", "blocked", 1795384200.0, 0, 1795384120.0, 0.5)
    assert cleared.event_id != ev.event_id
    other = FaultEvent("sbc-2", "raised", "blocked", 1795384140.0, 0, 1795384120.0, 0.07)
    assert other.event_id != ev.event_id


def test_dead_letter_check_agrees_with_the_json_schema() -> None:
    schema = load_schema("deadletter")
    assert schema["properties"]["reason"]["enum"] == list(REASONS)
    validator = jsonschema.Draft202012Validator(schema)
    full = DeadLetter("netsiam.samples", 3, 41, 1795384000123, b"sbc-1", b'{"source": "sbc-1"', "not_json",
                      "unexpected end of data", "sbc-1").to_json(1795384000.2)
    tombstone = DeadLetter("t", 0, 0, -1, None, None, "not_json", "empty message (null value)").to_json(1.0)
    for ok in (full, tombstone):
        assert validator.is_valid(ok)
        validate_dead_letter(ok)
    assert tombstone["value_b64"] is None and tombstone["value_size"] == 0 and tombstone["source"] is None
    broken = [{k: v for k, v in full.items() if k != "detail"}, {**full, "extra": 1}, {**full, "reason": "other"},
              {**full, "offset": -1}, {**full, "partition": 1.5}, {**full, "source": ""}, {**full, "topic": None},
              {**full, "detected_at": "now"}, {**full, "value_size": -2}]
    for bad in broken:
        assert not validator.is_valid(bad), bad
        with pytest.raises(ValueError):
            validate_dead_letter(bad)
    # what a JSON Schema cannot say, the Python check adds: the size and encoding of the original bytes
    for bad in ({**full, "value_size": 3}, {**full, "key_b64": "not base64!"}):
        with pytest.raises(ValueError):
            validate_dead_letter(bad)


def test_label_rows() -> None:
    iv = parse_label_row({"source": "s", "start": "2026-11-22T10:28:17Z", "end": "1795343307", "label": "blocked"},
                         where="x:2")
    assert iv.start == 1795343297.0 and iv.end == 1795343307.0
    jsonschema.validate({"source": "s", "start": 1.0, "end": 2.0, "label": "blocked"}, load_schema("labels"))
    for bad, msg in [({"source": "", "start": "1", "end": "2", "label": "x"}, "empty source"),
                     ({"source": "s", "start": "2", "end": "1", "label": "x"}, "not after"),
                     ({"source": "s", "start": "1", "end": "2", "label": "9x"}, "bad label"),
                     ({"source": "s", "start": "soon", "end": "2", "label": "x"}, "RFC 3339")]:
        with pytest.raises(NetsiamError, match=msg):
            parse_label_row(bad, where="f.csv:3")
    assert math.isfinite(iv.end)


def test_labels_files_from_spreadsheets_and_rows_of_the_wrong_width(tmp_path: Path) -> None:
    """A byte-order mark (a spreadsheet's UTF-8 CSV) is not part of the header; a row with more or fewer
    fields than four says so, not "bad label ''"; a directory is not "not found"."""
    from netsiam.traceio import read_labels

    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfsource,start,end,label\r\ns,1,2,blocked\r\n")
    assert [(iv.source, iv.label) for iv in read_labels(bom)] == [("s", "blocked")]
    trailing = tmp_path / "trailing.csv"   # a spreadsheet's empty trailing columns
    trailing.write_text("source,start,end,label,,\ns,1,2,blocked,,\n")
    assert [(iv.source, iv.label) for iv in read_labels(trailing)] == [("s", "blocked")]
    for name, row, n in (("few", "s,1", 2), ("many", "s,1,2,blocked,x", 5)):
        f = tmp_path / f"{name}.csv"
        f.write_text(f"source,start,end,label\n{row}\n")
        with pytest.raises(NetsiamError, match=f"{name}.csv:2: {n} field.s., a row has 4"):
            read_labels(f)
    with pytest.raises(NetsiamError, match="labels file is a directory"):
        read_labels(tmp_path)


@pytest.mark.parametrize("msg, ok", [
    ({"event_id": "e1", "label": "capacity_limit"}, True),
    ({"event_id": "e1", "label": "normal", "by": "noc-1", "note": "planned test"}, True),
    ({"event_id": "e1", "label": "slow_far_end"}, True),                  # a new class
    ({"event_id": "e1", "label": "unknown"}, False),                     # the detector's verdicts, not labels
    ({"event_id": "e1", "label": "silent"}, False),
    ({"event_id": "e1", "label": "9lives"}, False),
    ({"event_id": "", "label": "normal"}, False),
    ({"label": "normal"}, False),
    ({"event_id": "e1", "label": "normal", "extra": 1}, False),
    ({"event_id": "e1", "label": "normal", "by": 7}, False),
    (["e1", "normal"], False),
])
def test_feedback_parser_agrees_with_its_json_schema(msg: object, ok: bool) -> None:
    from netsiam.schemas.feedback import parse_feedback

    schema_ok = jsonschema.Draft202012Validator(load_schema("feedback")).is_valid(msg)
    try:
        fb = parse_feedback(enc(msg))
        parsed = True
    except NetsiamError:
        parsed = False
    assert parsed == schema_ok == ok
    if ok:
        assert fb.to_json()["event_id"] == "e1"
    with pytest.raises(NetsiamError, match="not JSON") as e:
        parse_feedback(b"{nope")
    assert getattr(e.value, "reason", None) == "not_json"   # the dead-letter reason netsiam learn uses
