"""Where a newly assigned partition resumes when retention has deleted part of what a replay needs.

Tansu keeps every record (it does not implement DeleteRecords), so no test broker can delete the
start of a log; this stands in for a Kafka cluster's partition whose log starts at ``start``: a fetch
from an offset outside ``[start, end]`` falls out of range and the consumer's ``auto_offset_reset``
moves it (kafka-python and librdkafka both do so). The daemon's own rewind (detector/offsets.py) runs
unchanged; the restart tests on the real broker (tests/test_reliability_crashloop.py) cover the rest.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka.structs import TopicPartition

from detector.offsets import Offsets

TP = TopicPartition("samples", 0)


class Partition:
    """The consumer's side of one partition whose log holds offsets ``start`` .. ``end - 1``."""

    def __init__(self, start: int, end: int, committed: int | None, reset: str) -> None:
        self.start, self.end, self._committed, self.reset = start, end, committed, reset
        self.sought: int | None = None

    def pause(self, *tps: Any) -> None: ...

    def resume(self, *tps: Any) -> None: ...

    def committed(self, tp: Any, timeout_ms: int = 0) -> int | None:
        return self._committed

    def beginning_offsets(self, tps: list[Any], timeout_ms: int = 0) -> dict[Any, int]:
        return {tp: self.start for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self.sought = offset

    def seek_to_beginning(self, *tps: Any) -> None:
        self.sought = self.start

    def seek_to_end(self, *tps: Any) -> None:
        self.sought = self.end

    def first_fetched(self) -> int:
        """The offset the first fetch returns: the seek, or where the reset policy moves an out-of-range one."""
        assert self.sought is not None
        if self.start <= self.sought <= self.end:
            return self.sought
        return self.start if self.reset == "earliest" else self.end


class Markers:
    def __init__(self, marker: int | None) -> None:
        self.marker = marker

    def read(self, tp: Any) -> int | None:
        return self.marker


class Pipeline:
    positions: dict[Any, int] = {}

    def drop_partitions(self, tps: Any) -> None: ...


def assign(part: Partition, marker: int | None) -> Offsets:
    off = Offsets(part, Markers(marker), Pipeline(), metrics=None, reset=part.reset)  # type: ignore[arg-type]
    off.note_assigned({TP})
    off.apply_rebalance(paused=False)
    return off


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_a_replay_whose_first_records_retention_deleted_starts_at_the_log_start(reset: str) -> None:
    part = Partition(start=500, end=2000, committed=1500, reset=reset)
    off = assign(part, marker=100)
    # replays what is left, publishing only from the committed offset on: nothing skipped, nothing twice
    assert part.first_fetched() == 500
    assert off.suppress_below(TP) == 1500


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_a_replay_still_in_the_log_starts_at_its_marker(reset: str) -> None:
    part = Partition(start=50, end=2000, committed=1500, reset=reset)
    off = assign(part, marker=100)
    assert part.first_fetched() == 100 and off.suppress_below(TP) == 1500


def test_a_committed_offset_retention_deleted_is_left_to_the_reset_policy() -> None:
    # Kafka's rule for a group whose offset is gone: kafka.auto_offset_reset decides (documented)
    part = Partition(start=1800, end=2000, committed=1500, reset="latest")
    assign(part, marker=100)
    assert part.sought == 1500 and part.first_fetched() == 2000


def test_an_unreadable_log_start_seeks_to_the_marker_as_before() -> None:
    part = Partition(start=50, end=2000, committed=1500, reset="earliest")

    def fails(tps: list[Any], timeout_ms: int = 0) -> dict[Any, int]:
        raise TimeoutError("no answer")

    part.beginning_offsets = fails  # type: ignore[method-assign]
    assign(part, marker=100)
    assert part.sought == 100
