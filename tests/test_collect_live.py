"""Live, end to end, real parts only (issue #14's acceptance): a real SIPp UAC -> fault relay -> SIPp
UAS on 127.0.0.1; ``collect sipp --follow`` (the UAC's statistics, source ``sbc-live``) and
``collect pcap --interface lo`` (the relay the UAC calls, and the UAS) -> the embedded broker ->
``netsiam detect`` with the shipped model. The UAS is frozen (SIGSTOP) for 40 s and resumed, then,
once no window holds the freeze, the relay answers a surge with 503 (a fault inside another's
aftermath is the corpus's back-to-back recordings, docs/results.md). For each fault, on the UAC's statistics and on the captured
relay, the ``raised`` event names the fault and arrives within 10 s (wall clock) of its start, and
the ``cleared`` event arrives after it ended. The captured relay may flap within the surge (cleared
and raised again with the same fault: its pcap-derived counters are in no training recording, a
known limit), as long as no other fault is raised and its last clear comes after the fault ended.
``make demo-live`` runs the same :class:`LiveBed`.

The 10 s target is the issue's. A model that decides every 5 s on 30-s windows raises 13-31 s after a
fault starts, so with such a model (manifest stride > 1) a late raise is an expected failure
(:class:`LateDetection`, strict); every other check must pass with any model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import CAPTURE_SKIP, REPO, needs_sipp

from netsiam.serving import default_model_path

sys.path.insert(0, str(REPO / "deploy" / "testbed"))
from live_demo import SIPP_SOURCE, LiveBed, model_window_s  # noqa: E402

RAISE_WITHIN_S = 10.0


class LateDetection(AssertionError):
    """A fault was raised, with the right name, but later than RAISE_WITHIN_S after it started."""


def _shipped_stride() -> int:
    path = default_model_path() / "manifest.json"
    return int(json.loads(path.read_text())["window"]["stride"]) if path.is_file() else 1


@pytest.mark.slow
@pytest.mark.serial  # judged on wall-clock delays: beside another worker it once raised a surge 30 s late
@needs_sipp
@pytest.mark.skipif(bool(CAPTURE_SKIP), reason=CAPTURE_SKIP or "capture possible")
@pytest.mark.skipif(not default_model_path().is_dir(), reason="no shipped model yet (make model)")
@pytest.mark.xfail(_shipped_stride() > 1, raises=LateDetection, strict=True,
                   reason="the shipped model decides every 5 s on 30-s windows: raised 13-31 s after a fault starts")
def test_live_faults_raised_within_10_s_and_cleared_after_they_end(tmp_path: Path) -> None:
    bed = LiveBed(tmp_path, log=sys.stdout)
    try:
        bed.start()
        bed.run(warmup_s=model_window_s() + 8.0)
    finally:
        bed.close()
    print("\n" + bed.timeline())
    watched = (SIPP_SOURCE, bed.relay_source)
    early = [a.event for a in bed.events if a.event["state"] == "raised" and a.at < bed.faults[0].start
             and a.event["source"] in watched]
    assert early == [], "a fault raised during the normal warm-up"
    late = []
    for i, f in enumerate(bed.faults):
        nxt = bed.faults[i + 1].start if i + 1 < len(bed.faults) else float("inf")
        for src in watched:
            r = bed.first(src, "raised", f.start, nxt)
            assert r is not None, f"{f.fault} ({f.how}) never raised on {src}\n{bed.timeline()}"
            assert r.event["fault"] == f.fault, f"{f.fault} raised as {r.event['fault']} on {src}\n{bed.timeline()}"
            c = bed.first(src, "cleared", r.at, nxt)
            if src != SIPP_SOURCE and c is not None and c.at <= f.end:
                # a known limit: no pcap-derived peer is in the training corpus, and mid-surge the relay's
                # counters have flapped (cleared and raised again seconds later); the fault must still be
                # the only one raised and be up when the fault ends
                again = [a for a in bed.events if a.event["source"] == src
                         and f.start <= a.at < min(nxt, f.end + RAISE_WITHIN_S)]
                assert {a.event["fault"] for a in again} == {f.fault}, f"{src}: other faults\n{bed.timeline()}"
                c = max((a for a in again if a.event["state"] == "cleared"), key=lambda a: a.at)
                print(f"note: {f.fault} on {src} flapped ({sum(a.event['state'] == 'raised' for a in again)} raises)")
            assert c is not None and c.at > f.end, f"{f.fault} on {src} not cleared after it ended\n{bed.timeline()}"
            if r.at - f.start > RAISE_WITHIN_S:
                late.append(f"{f.fault} on {src}: raised {r.at - f.start:.1f} s after it started "
                            f"(cleared {c.at - f.end:.1f} s after it ended)")
    if late:
        raise LateDetection(f"raised later than {RAISE_WITHIN_S:.0f} s: " + "; ".join(late) + "\n" + bed.timeline())
