"""Trainings side by side: one spawned process per core, TensorFlow on one thread in each.

A training at the encoder's batch sizes keeps about one core busy (two TensorFlow threads measured only
~6 % faster than one), so ``netsiam train``'s candidates and the leave-one-out benchmark's models train
one per core. The weights are the same as trained one after another in one process (TensorFlow's
thread count does not change them; ``tests/test_train.py`` checks it). Only the TensorFlow backend
was checked, so under another Keras backend, or with a GPU visible (every process would claim it),
trainings run one after another.

A script that trains side by side needs the usual ``if __name__ == "__main__":`` guard (spawned
processes import the main module).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

__all__ = ["MAX_WORKERS", "side_by_side", "workers_for"]

# Each process holds TensorFlow and its own copy of the training windows (~1 GB for make model's data).
MAX_WORKERS = 8
_IN_WORKER = "NETSIAM_TRAINING_WORKER"

J = TypeVar("J")
R = TypeVar("R")


def workers_for(n: int) -> int:
    """How many of ``n`` trainings run at once: one per core this process may use, at most ``n`` and
    :data:`MAX_WORKERS`; 1 under a backend other than TensorFlow, with a GPU visible, or in a worker (its
    own candidates train in turn: the cores are taken)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if min(n, cores) < 2 or os.environ.get(_IN_WORKER) or not _tensorflow_on_cpu():
        return 1
    return min(n, cores, MAX_WORKERS)


def _tensorflow_on_cpu() -> bool:
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def side_by_side(fn: Callable[[J], R], jobs: Iterable[J], workers: int) -> list[R]:
    """``[fn(job) for job in jobs]``, ``workers`` at a time in spawned processes (``fn`` and the jobs must
    pickle). A worker that dies raises ``BrokenProcessPool``; an error or Ctrl-C here terminates every
    worker at once instead of waiting for their trainings to end."""
    with _pool(workers) as pool:
        return list(pool.map(fn, jobs))


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start)
    try:
        yield pool
    except BaseException:
        # ProcessPoolExecutor.terminate_workers() from Python 3.14; until then its processes
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start() -> None:
    """A worker: Ctrl-C is the parent's to handle (it terminates us), TensorFlow quiet and on one thread;
    on Linux it dies with the process that started it (killed, it would leave its workers training on)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ[_IN_WORKER] = "1"
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG
    from netsiam import quiet

    quiet.install()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
