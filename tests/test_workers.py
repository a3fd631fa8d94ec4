"""Trainings side by side (netsiam.trainer.workers): results in order, a dead worker an error, not a hang."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from netsiam.trainer.workers import MAX_WORKERS, side_by_side, workers_for


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _die(x: int) -> int:
    if x == 2:
        os._exit(3)          # as the OOM killer or a crash in TensorFlow would leave it
    return x


def _fail(x: int) -> int:
    if x == 2:
        raise ValueError(f"job {x} refused")
    return x


def test_results_come_back_in_the_jobs_order() -> None:
    out = side_by_side(_square_and_pid, [3, 1, 2], 2)
    assert [r for r, _ in out] == [9, 1, 4]
    assert os.getpid() not in {pid for _, pid in out}


def test_a_worker_that_dies_is_an_error_not_a_hang() -> None:
    with pytest.raises(BrokenProcessPool):
        side_by_side(_die, [1, 2, 3, 4], 2)


def test_a_job_error_comes_back_as_itself() -> None:
    with pytest.raises(ValueError, match="job 2 refused"):
        side_by_side(_fail, [1, 2, 3], 2)


def _workers_inside(n: int) -> int:
    return workers_for(n)


def test_one_training_never_needs_a_second_process_and_a_worker_starts_none() -> None:
    assert workers_for(1) == 1
    assert 1 <= workers_for(100) <= MAX_WORKERS
    # a worker's own candidates (a leave-one-out model with training.candidates 3) train in turn
    assert side_by_side(_workers_inside, [4, 4], 2) == [1, 1]
