"""Hot reload of the model artifact, loaded on a background thread and swapped between batches.

The watcher polls the artifact's files (mtime and size of ``manifest.json``, ``encoder.keras``,
``prototypes.json``) every ``detector.reload_poll_s`` and reloads when they change or on
:meth:`ArtifactWatcher.trigger` (SIGHUP). A load that fails (torn copy, hash mismatch, shape
mismatch) is refused with one log line and counted; the old model keeps serving and the same
on-disk state is not retried until it changes again. The new artifact is warmed up (its predict
function traced) here, so the swap costs the serving loop nothing.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from netsiam.errors import NetsiamError
from netsiam.serving import ENCODER_FILE, MANIFEST_FILE, PROTOTYPES_FILE, Artifact, load_artifact

__all__ = ["ArtifactWatcher", "artifact_signature", "freeze_heap", "warm_up"]

log = logging.getLogger("netsiam.detector")

Signature = tuple[tuple[int, int], ...]


def artifact_signature(path: Path) -> Signature:
    """(mtime_ns, size) of each artifact file; (-1, -1) for a missing one."""
    out = []
    for name in (MANIFEST_FILE, ENCODER_FILE, PROTOTYPES_FILE):
        try:
            st = os.stat(path / name)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


def warm_up(art: Artifact) -> None:
    """Compile the encoder for every batch shape it will serve before it serves: under XLA about
    0.7 s per shape (6 shapes) on 2 busy cores, which would otherwise stall the first batches. The
    shapes of the path the daemon embeds by: raw windows in where the derivation is compiled too."""
    art.warm_up(raw=True)


def freeze_heap() -> None:
    """Take everything alive now (TensorFlow, Keras, the model: ~350k tracked objects) out of the
    cyclic garbage collector's scans (``gc.freeze``), so a full collection only walks what the stream
    allocated since. Measured in the daemon at 3k records/s (``gc.DEBUG_STATS``): a gen-2 collection
    stopped every thread for 150-410 ms before, 3-15 ms after; a stall that size lands straight in
    the p99 record->event latency (and delays fetches, embeds and acks alike)."""
    gc.collect()
    gc.freeze()


class ArtifactWatcher:
    """Background loader: ``take()`` returns a freshly loaded artifact once, or None."""

    def __init__(self, path: Path, poll_s: float, *, on_failure: Callable[[str], None],
                 prepare: Callable[[Artifact], None] = warm_up,
                 serving: Callable[[], Artifact | None] = lambda: None) -> None:
        self.path = path
        self._serving = serving   # the artifact served now: an unchanged encoder is reused, not reloaded
        self.poll_s = max(0.05, poll_s)
        self._on_failure = on_failure
        self._prepare = prepare
        self._sig = artifact_signature(path)
        self._ready: Artifact | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._forced = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netsiam-reload", daemon=True)

    def start(self) -> ArtifactWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(30)

    def trigger(self) -> None:
        """Reload even if nothing changed on disk (SIGHUP). Safe from a signal handler."""
        self._forced = True
        self._wake.set()

    def take(self) -> Artifact | None:
        with self._lock:
            art, self._ready = self._ready, None
        return art

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            sig = artifact_signature(self.path)
            if sig == self._sig and not self._forced:
                continue
            self._forced = False
            self._sig = sig  # a refused state is not retried until the files change again
            try:
                served = self._serving()
                art = load_artifact(self.path, reuse=served)
                if served is None or art.encoder is not served.encoder:   # a reused encoder is warm already
                    self._prepare(art)
            except NetsiamError as e:
                # Caught between two files of one save? Each is fsynced, so the next may come a little
                # later: look again a second on, and load a save still under way rather than refuse it.
                if artifact_signature(self.path) == sig:
                    self._stop.wait(min(self.poll_s, 1.0))
                if artifact_signature(self.path) != sig:
                    self._wake.set()
                    continue
                self._on_failure(str(e))
                continue
            except Exception as e:  # noqa: BLE001 - whatever a broken artifact raises, keep serving
                self._on_failure(f"{type(e).__name__}: {e}")
                continue
            with self._lock:
                self._ready = art
