"""Shared fixtures: one real Kafka-protocol broker (Tansu) per test session, fresh topics per test, and
the test model (helpers.py describes it) in memory and as an artifact directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonProc, Model, fit_model, save_artifact, unique

from netsiam.config import TopicsConfig


@pytest.fixture(scope="session")
def model() -> Model:
    """The test model, fitted on a simulated trace (seed 7) that no test replays."""
    return fit_model()


@pytest.fixture(scope="session")
def model_dir(model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model saved as a real artifact directory (read-only by convention: copy to modify)."""
    return save_artifact(tmp_path_factory.mktemp("model") / "artifact", model.head, model.prototypes,
                         model.window, "test-1")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Tansu broker for the whole session, on a free port (its log in the session's tmp dir)."""
    from netsiam.broker import start_broker

    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with start_broker(0, log_path=log_path) as bp:
        yield bp


@pytest.fixture
def topics(broker: Any) -> TopicsConfig:
    """Fresh samples/faults/dead-letter/feedback topics for one test (4 sample partitions)."""
    from netsiam.broker import create_topics

    t = unique()
    tc = TopicsConfig(samples=f"{t}.samples", faults=f"{t}.faults", deadletter=f"{t}.deadletter",
                      feedback=f"{t}.feedback", samples_partitions=4)
    create_topics(broker.bootstrap, tc)
    return tc


@pytest.fixture
def daemons() -> Iterator[list[DaemonProc]]:
    """Collects daemon children; any still running at teardown are killed (by pid)."""
    procs: list[DaemonProc] = []
    yield procs
    for d in procs:
        d.kill()
