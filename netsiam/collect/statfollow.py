"""Follow one SIPp ``-trace_stat`` file as a running SIPp writes it, like ``tail -F``.

Each :meth:`StatFollower.poll` returns the whole statistics periods written since the last one,
parsed exactly as ``netsiam import sipp`` parses them (same header and row functions; sentinels and
unreadable values of columns the model never reads left out). What a live file does that a finished
one does not:

- **partial last line**: SIPp is still writing it; it waits in a buffer until its newline arrives;
- **truncated or recreated**: a restarted SIPp (``-stf`` names the same file) truncates it, or the
  file is replaced by a new one (new inode). The follower notices (size below its position, a new
  inode, or the file's first bytes changed) and reads the new run from its header; a row the old
  file still held is read first. A header line in the middle of the file starts a new run too;
- **partial periods**: SIPp writes a period of a few ms when it starts and a fraction of one when it
  exits. The importer drops periods shorter than half the file's median; the follower uses the
  median of the last periods seen (holding a run's first row until a second one says what a whole
  period is), which gives the same rows on SIPp's files (a test compares them);
- **bad lines** never stop it: they are counted and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
from collections import deque
from pathlib import Path
from typing import BinaryIO

from netsiam.collect.metrics import CollectMetrics
from netsiam.errors import NetsiamError
from netsiam.importers.sipp import (
    MIN_PERIOD_S,
    PARTIAL_PERIOD,
    StatHeader,
    StatRow,
    is_header,
    parse_header,
    parse_row,
)

__all__ = ["PeriodFilter", "StatFollower"]

log = logging.getLogger("netsiam.collect")

CHUNK = 1 << 20           # bytes read per poll at most: memory stays bounded on a large backlog
MAX_LINE = 1 << 20        # a "line" longer than this without a newline is not SIPp statistics
PREFIX = 4096             # first bytes remembered to notice a rewrite (header + first rows: StartTime)
RECENT_PERIODS = 15


class PeriodFilter:
    """Keeps whole periods: a period shorter than max(MIN_PERIOD_S, PARTIAL_PERIOD x the median of the
    recent periods) is a start or exit fragment. A run's first row waits for the second."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=RECENT_PERIODS)
        self._held: list[StatRow] = []

    def add(self, row: StatRow) -> tuple[list[StatRow], int]:
        """-> (rows decided whole, rows dropped as partial)."""
        self._recent.append(row.ts - row.start)
        self._held.append(row)
        if len(self._recent) < 2:
            return [], 0
        return self._decide()

    def flush(self) -> tuple[list[StatRow], int]:
        """Decide held rows with what is known (the end of a file read once, a reset)."""
        return self._decide() if self._held else ([], 0)

    def _decide(self) -> tuple[list[StatRow], int]:
        cutoff = max(MIN_PERIOD_S, PARTIAL_PERIOD * statistics.median(self._recent))
        held, self._held = self._held, []
        whole = [r for r in held if r.ts - r.start >= cutoff]
        return whole, len(held) - len(whole)


class StatFollower:
    def __init__(self, path: str | os.PathLike[str], metrics: CollectMetrics) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self._f: BinaryIO | None = None
        self._ident: tuple[int, int] | None = None
        self._pos = 0
        self._buf = b""
        self._prefix = b""
        self._header: StatHeader | None = None
        self._periods = PeriodFilter()
        self._line_no = 0
        self._warned = False
        self.headers = 0            # -trace_stat headers read (0 after a whole file: not SIPp statistics)
        self.eof = False            # everything written so far has been read
        self.resets = 0

    @property
    def backlog(self) -> int:
        """Bytes in the file not read yet."""
        try:
            return max(0, self.path.stat().st_size - self._pos) if self._f is not None else 0
        except OSError:
            return 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def poll(self, final: bool = False) -> list[StatRow]:
        """Whole periods written since the last call. ``final``: the file is complete (read once):
        a last line without its newline is taken if it has every field, held rows are decided."""
        out: list[StatRow] = []
        try:
            st: os.stat_result | None = os.stat(self.path)
        except OSError:
            st = None
        if self._f is not None:
            if st is None or (st.st_dev, st.st_ino) != self._ident:
                self._read(out, final=True)      # the old file: whatever it still held
                self._flush(out)
                self.close()
                self._restart("recreated" if st is not None else "removed")
            elif st.st_size < self._pos or self._rewritten():
                self._flush(out)
                self._f.seek(0)
                self._restart("truncated")
        if self._f is None:
            if st is None:
                self.eof = True
                return out
            try:
                self._f = self.path.open("rb")
            except OSError as e:
                raise NetsiamError(f"{self.path}: cannot read ({e.strerror})") from None
            fst = os.fstat(self._f.fileno())
            self._ident = (fst.st_dev, fst.st_ino)
        self._read(out, final)
        if final:
            self._flush(out)
        return out

    # -- reading -----------------------------------------------------------------------------
    def _read(self, out: list[StatRow], final: bool) -> None:
        assert self._f is not None
        data = self._f.read(CHUNK)
        self._pos += len(data)
        if len(self._prefix) < PREFIX:
            self._prefix += data[: PREFIX - len(self._prefix)]
        self.eof = len(data) < CHUNK
        buf = self._buf + data
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if final and self.eof and self._buf:
            lines.append(self._buf)   # read once: a last line without newline counts if it is whole
            self._buf = b""
        elif len(self._buf) > MAX_LINE:
            self._bad(f"line longer than {MAX_LINE} bytes")
            self._buf = b""
        for raw in lines:
            self._line_no += 1
            self._line(raw, out, last=final and self.eof and raw is lines[-1])

    def _line(self, raw: bytes, out: list[StatRow], last: bool) -> None:
        where = f"{self.path}:{self._line_no}"
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            self._bad(f"{where}: not text")
            return
        if not line.strip():
            return
        if is_header(line):
            if self._header is not None:      # a new SIPp run appended to the same file
                self._flush(out)
                self._periods = PeriodFilter()
                self._count_reset("new run")
            try:
                self._header = parse_header(line, where)
                self.headers += 1
            except NetsiamError as e:
                self._not_statistics(str(e))
            return
        if self._header is None:
            self._not_statistics(f"{where}: no SIPp -trace_stat header before the first row")
            return
        try:
            row = parse_row(self._header, line, where)
        except NetsiamError as e:
            self._bad(str(e))
            return
        if row is None:
            if not last:   # the importer drops a cut-short last line of a finished file silently too
                self._bad(f"{where}: fewer fields than the header")
            return
        self.metrics.rows_read.inc()
        whole, dropped = self._periods.add(row)
        out.extend(whole)
        if dropped:
            self.metrics.skipped("partial_period", dropped)

    def _flush(self, out: list[StatRow]) -> None:
        whole, dropped = self._periods.flush()
        out.extend(whole)
        if dropped:
            self.metrics.skipped("partial_period", dropped)

    def _rewritten(self) -> bool:
        """The file's first bytes differ from those read: rewritten in place (same inode, size not below
        our position). A new SIPp run starts with another StartTime, so its first row differs."""
        if self._f is None or not self._prefix:
            return False
        with contextlib.suppress(OSError):
            return os.pread(self._f.fileno(), len(self._prefix), 0) != self._prefix
        return False

    def _restart(self, why: str) -> None:
        self._pos, self._buf, self._prefix, self._line_no = 0, b"", b"", 0
        self._header = None
        self._periods = PeriodFilter()
        self._warned = False
        if why:
            self._count_reset(why)

    def _count_reset(self, why: str) -> None:
        self.resets += 1
        self.metrics.resets.inc()
        log.info("%s: %s (a SIPp restart): reading the new run from its start", self.path, why)

    def _bad(self, what: str) -> None:
        self.metrics.error("bad_row")
        log.warning("skipped: %s", what)

    def _not_statistics(self, what: str) -> None:
        self.metrics.error("not_statistics")
        if not self._warned:
            self._warned = True
            log.warning("%s (waiting for SIPp statistics)", what)
