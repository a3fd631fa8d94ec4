"""The collector's memory across its own restarts: the sample time of the last published row.

A source's rows carry strictly increasing ``ts`` (SIPp's ``CurrentTime``, wall clock), across SIPp
restarts too, so one number says where to resume: a restarted collector re-reads its files and
publishes only rows newer than it. It is advanced only over rows the broker acknowledged (or that
were written, with ``-o``), and written atomically (old or new content, never torn).

    {"format": 1, "source": "sbc-1", "last_ts": 1795410482.420663, "saved_at": 1795410483.1}
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import orjson

from netsiam.errors import NetsiamError
from netsiam.traceio import atomic_write_bytes

__all__ = ["CollectState", "default_state_path"]

FORMAT = 1


def default_state_path(kind: str, source: str) -> Path:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=) or ``~/.local/state/netsiam``."""
    base = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    root = Path(base) if base else Path.home() / ".local" / "state" / "netsiam"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
    return root / f"collect-{kind}-{safe}.json"


class CollectState:
    def __init__(self, path: Path | None, source: str, last_ts: float = -math.inf) -> None:
        self.path, self.source, self.last_ts = path, source, last_ts
        self._saved = -math.inf       # what the file holds

    @classmethod
    def load(cls, path: Path | None, source: str) -> CollectState:
        """The saved state, or a fresh one when the file does not exist (``path`` None: never saved)."""
        if path is None or not path.exists():
            return cls(path, source)
        try:
            doc = orjson.loads(path.read_bytes())
            if doc.get("format") != FORMAT or not isinstance(doc.get("last_ts"), int | float):
                raise ValueError("unknown format")
        except (OSError, ValueError, AttributeError) as e:
            raise NetsiamError(f"{path}: unreadable collector state ({e}); move it away to start over") from None
        if doc.get("source") != source:
            raise NetsiamError(f"{path}: state of source {doc.get('source')!r}, not {source!r}; "
                               "give each source its own --state file")
        state = cls(path, source, float(doc["last_ts"]))
        state._saved = state.last_ts
        return state

    def published(self, ts: float) -> bool:
        """True when a row with this ts was published by this or an earlier run."""
        return ts <= self.last_ts

    def advance(self, ts: float) -> None:
        self.last_ts = max(self.last_ts, ts)

    def save(self) -> None:
        """Write the state if it changed since the last save."""
        if self.path is None or self.last_ts == self._saved:
            return
        doc = {"format": FORMAT, "source": self.source, "last_ts": self.last_ts, "saved_at": time.time()}
        atomic_write_bytes(self.path, orjson.dumps(doc) + b"\n")
        self._saved = self.last_ts
