"""docs/metrics.md lists every Prometheus metric the daemon and the collectors export, each row exactly as
the code defines it (name, type, labels, help): the reference operators write alerts and dashboards from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from netsiam.collect.metrics import ERROR_REASONS, SKIP_REASONS, CollectMetrics
from netsiam.detector.metrics import DetectorMetrics, RaisedFaults, SourceTimes
from netsiam.schemas.feedback import FeedbackError, parse_feedback
from netsiam.schemas.record import REASONS
from netsiam.trainer.feedback import Episode, Outcome, describe
from netsiam.trainer.learnmetrics import ACTIONS, FEEDBACK_REASONS, LearnMetrics

DOC = REPO / "docs" / "metrics.md"


def rows(obj: object) -> list[str]:
    # prometheus_client keeps a metric's name, type, labels and help only in private attributes (its public
    # describe() drops the label names of a family with no child yet); a renamed attribute fails here loudly
    out: list[str] = []
    for v in vars(obj).values():
        if isinstance(v, MetricWrapperBase) and v._labelvalues == ():   # a family, not one labelled child
            name = v._name + ("_total" if v._type == "counter" else "")
            labels = ", ".join(f"`{x}`" for x in v._labelnames) or "-"
            out.append(f"| `{name}` | {v._type} | {labels} | {v._documentation} |")
    return out


def collector_rows(c: Collector) -> list[str]:
    """Rows of a custom collector's families, as its describe() gives them."""
    return [f"| `{f.name}` | {f.type} | {', '.join(f'`{x}`' for x in f._labelnames) or '-'} | {f.documentation} |"
            for f in c.describe()]


def expected_rows() -> list[str]:
    daemon = [*collector_rows(SourceTimes(list)), *collector_rows(RaisedFaults()),
              *rows(DetectorMetrics(CollectorRegistry()))]
    return daemon + rows(CollectMetrics(CollectorRegistry(), "sipp")) + rows(LearnMetrics(CollectorRegistry()))


def test_every_metric_is_documented_as_the_code_defines_it() -> None:
    text = DOC.read_text()
    want = expected_rows()
    assert len(want) >= 30
    missing = [r for r in want if r not in text]
    assert not missing, "docs/metrics.md lacks or differs on:\n" + "\n".join(missing)
    documented = set(re.findall(r"^\| `(netsiam_[a-z_]+)` \|", text, re.M))
    assert documented == {re.match(r"\| `([a-z_]+)`", r).group(1) for r in want}  # type: ignore[union-attr]


def test_every_reason_label_value_is_documented() -> None:
    text = DOC.read_text()
    missing = [r for r in (*REASONS, *ERROR_REASONS, *SKIP_REASONS, *ACTIONS, *FEEDBACK_REASONS) if f"`{r}`" not in text]
    assert not missing, missing


def test_learn_exports_every_action_and_reason_it_can_count() -> None:
    """Zeros exported for what ``netsiam learn`` can meet: every feedback outcome (each one it can describe), every
    reason a message is refused for (a reason or action missing here would first appear with its first message)."""
    ep = Episode("sbc-1", "unknown", 10.0, 20.0)
    for action in ACTIONS:
        assert describe(Outcome(action, "degraded", ep, 5, "v2", "v1"), Path("m")).startswith("feedback: ")
    for bad in (b"{not json", b"[1]", b'{"event_id": "e"}', b'{"event_id": "e", "label": "unknown"}'):
        with pytest.raises(FeedbackError) as e:
            parse_feedback(bad)
        assert e.value.reason in FEEDBACK_REASONS, bad
    assert "refused" in FEEDBACK_REASONS   # learn's own: feedback it could not apply
