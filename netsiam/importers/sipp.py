"""SIPp ``-trace_stat`` CSV files -> signalling records.

SIPp writes one row per ``-fd`` period: cumulative ``(C)`` and per-period ``(P)`` columns plus a
few gauges. A record keeps every ``(P)`` column under its bare name (``OutgoingCall(P)`` ->
``OutgoingCall``) and the gauge ``CurrentCall``; time-valued columns (``hh:mm:ss:usec``, e.g.
``ResponseTime1(P)``, ``CallLength(P)``) become milliseconds. ``ts`` is the epoch of the row's
``CurrentTime`` (SIPp >= 3.4 writes ``date<TAB>time<TAB>epoch``; older ones only date and time,
read as local time).

Rows covering a fraction of a period are dropped: SIPp writes one when it starts (all zeros,
a few ms long) and one or two when it exits; their counts are not comparable with the rest.

SIPp writes int64 sentinels (9223372036854775807 read as 9.223372036854776e+18) into statistics it
cannot compute yet, e.g. ``CallLengthStDev`` before two calls ended. A sentinel is left out of the
record (a metric the model needs then reads as missing); a negative or unreadable value in a column
the model never reads is left out too. Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.traceio import Record

__all__ = [
    "MIN_PERIOD_S", "PARTIAL_PERIOD", "REQUIRED_COLUMNS", "StatHeader", "StatRow", "import_sipp", "is_header",
    "parse_header", "parse_row", "parse_stat_file",
]

PERIOD_SUFFIX = "(P)"
GAUGES = ("CurrentCall",)
REQUIRED_COLUMNS: tuple[str, ...] = (
    "CurrentTime",
    "LastResetTime",
    *(m if m in GAUGES else m + PERIOD_SUFFIX for m in RAW_METRICS),
)
# SIPp's "not computed" values: INT64_MAX (and UINT64_MAX) printed as numbers.
SENTINEL = 9.2e18
# A period shorter than this fraction of the file's median period is a start/exit fragment.
PARTIAL_PERIOD = 0.5
MIN_PERIOD_S = 0.01
_SNIFF = 8192


@dataclass(frozen=True, slots=True)
class StatRow:
    """One whole statistics period of a file."""

    start: float  # epoch of the period start (LastResetTime)
    ts: float  # epoch of the period end (CurrentTime)
    metrics: dict[str, float]


def import_sipp(paths: Sequence[str | os.PathLike[str]], source: str) -> list[Record]:
    """Records of one source from one or more SIPp statistics files, sorted by ``ts``.

    Several files are consecutive parts of one run (or several runs); files that overlap in time
    raise :class:`NetsiamError`, as does any file that is not SIPp statistics.
    """
    if not source:
        raise NetsiamError("import sipp: a source name is required")
    if not paths:
        raise NetsiamError("import sipp: no statistics files given")
    parts = sorted((parse_stat_file(p) for p in paths), key=lambda part: part[1][0].start)
    for (prev_path, prev), (path, rows) in zip(parts, parts[1:], strict=False):
        if rows[0].start < prev[-1].ts:
            raise NetsiamError(
                f"SIPp statistics files overlap in time: {prev_path} ends at {prev[-1].ts:.3f}, "
                f"{path} starts at {rows[0].start:.3f}"
            )
    return [Record(source=source, ts=r.ts, metrics=r.metrics) for _, rows in parts for r in rows]


def parse_stat_file(path: str | os.PathLike[str]) -> tuple[Path, list[StatRow]]:
    """One file -> its whole periods in time order (raises NetsiamError naming the file)."""
    p = Path(path)
    text = _read_text(p)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise NetsiamError(f"{p}: empty file, not SIPp statistics")
    header = parse_header(lines[0], str(p))
    rows: list[StatRow] = []
    last = len(lines) - 1
    for k, line in enumerate(lines[1:], start=1):
        where = f"{p}:{k + 1}"
        row = parse_row(header, line, where)
        if row is None:
            if k == last:
                continue  # a row cut short by a killed or still-running SIPp
            raise NetsiamError(f"{where}: {len(_split(line, header.delim))} fields, header has {len(header.columns)}")
        rows.append(row)
    rows = _whole_periods(rows)
    if not rows:
        raise NetsiamError(f"{p}: no complete statistics period (SIPp ran for less than one -fd period?)")
    for a, b in zip(rows, rows[1:], strict=False):
        if b.ts <= a.ts:
            raise NetsiamError(f"{p}: CurrentTime goes backwards at {b.ts:.6f}")
    return p, rows


@dataclass(frozen=True, slots=True)
class StatHeader:
    """A statistics file's header line: the delimiter and where each column is."""

    delim: str
    columns: tuple[str, ...]
    index: dict[str, int]
    wanted: tuple[tuple[int, str], ...]  # (column index, metric name) of every metric column


def is_header(line: str) -> bool:
    """True for a SIPp -trace_stat header line (a SIPp that restarts writes one again)."""
    return line.startswith("StartTime") and len(line) > len("StartTime")


def parse_header(line: str, where: str) -> StatHeader:
    """The header line of a statistics file (raises NetsiamError naming ``where``)."""
    if not is_header(line):
        raise NetsiamError(f"{where}: not a SIPp -trace_stat file (header does not start with StartTime)")
    delim = line[len("StartTime")]  # SIPp's -stat_delimiter, ';' by default
    columns = tuple(_split(line, delim))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise NetsiamError(f"{where}: not a SIPp -trace_stat file (missing columns: {', '.join(missing)})")
    wanted = tuple((i, c.removesuffix(PERIOD_SUFFIX)) for i, c in enumerate(columns) if _is_metric(c))
    return StatHeader(delim, columns, {name: i for i, name in enumerate(columns)}, wanted)


def parse_row(header: StatHeader, line: str, where: str) -> StatRow | None:
    """One data line -> its row; None when the line has fewer fields than the header (cut short).

    Sentinels and unreadable values of columns the model never reads are left out; a bad value
    in a column the model reads, or a bad timestamp, raises NetsiamError naming ``where``.
    """
    fields = _split(line, header.delim)
    if len(fields) < len(header.columns):
        return None
    ts = _epoch(fields[header.index["CurrentTime"]], where)
    start = _epoch(fields[header.index["LastResetTime"]], where)
    metrics: dict[str, float] = {}
    for i, name in header.wanted:
        try:
            v = _value(fields[i], f"{where} {header.columns[i]}")
        except NetsiamError:
            if name in RAW_METRICS:
                raise
            continue                      # a column the model never reads: never a reason to refuse
        if v < SENTINEL:
            metrics[name] = v
    return StatRow(start=start, ts=ts, metrics=metrics)


def _read_text(p: Path) -> str:
    try:
        if str(p) == "-":  # standard input; compressed or not, by its first bytes
            data = sys.stdin.buffer.read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
        else:
            data = p.read_bytes()
            if p.suffix == ".gz":
                data = gzip.decompress(data)
    except gzip.BadGzipFile:
        raise NetsiamError(f"{p}: not a gzip file") from None
    except EOFError:
        raise NetsiamError(f"{p}: a truncated gzip file (it ends before its compressed stream does)") from None
    except FileNotFoundError:
        raise NetsiamError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise NetsiamError(f"{p}: is a directory, not a SIPp statistics file") from None
    except OSError as e:
        raise NetsiamError(f"{p}: cannot read ({e.strerror})") from None
    if b"\0" in data[:_SNIFF]:
        raise NetsiamError(f"{p}: binary file, not SIPp statistics")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NetsiamError(f"{p}: not a text file, not SIPp statistics") from None


def _split(line: str, delim: str) -> list[str]:
    fields = line.rstrip("\r\n").split(delim)
    if fields and fields[-1] == "":
        fields.pop()  # SIPp ends every line with the delimiter
    return fields


def _is_metric(column: str) -> bool:
    return column.endswith(PERIOD_SUFFIX) or column in GAUGES


def _epoch(field: str, where: str) -> float:
    """``2026-11-23<TAB>04:58:13.538030<TAB>1795409893.538030`` -> 1795409893.53803."""
    parts = field.split()
    if len(parts) >= 3:
        try:
            return float(parts[-1])
        except ValueError:
            pass
    if len(parts) >= 2:
        stamp = f"{parts[0]} {parts[1]}"
        for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S:%f", "%Y-%m-%d %H:%M:%S"):
            try:
                return datetime.strptime(stamp, fmt).timestamp()  # older SIPp: local time
            except ValueError:
                continue
    raise NetsiamError(f"{where}: cannot read a timestamp from {field!r}")


def _value(field: str, where: str) -> float:
    """A counter, a rate, or a SIPp duration (``hh:mm:ss:usec`` or ``hh:mm:ss``) in ms."""
    field = field.strip()
    try:
        if ":" in field:
            parts = field.split(":")
            if len(parts) not in (3, 4):
                raise ValueError(field)
            h, m, s = int(parts[0]), int(parts[1]), float(parts[2])
            usec = int(parts[3]) if len(parts) == 4 else 0
            value = ((h * 60 + m) * 60 + s) * 1000.0 + usec / 1000.0
        else:
            value = float(field)
    except ValueError:
        raise NetsiamError(f"{where}: not a number or SIPp duration: {field!r}") from None
    if not math.isfinite(value) or value < 0:
        raise NetsiamError(f"{where}: value must be finite and non-negative, got {field!r}")
    return value


def _whole_periods(rows: list[StatRow]) -> list[StatRow]:
    periods = [r.ts - r.start for r in rows]
    if not periods:
        return []
    typical = statistics.median(periods)
    cutoff = max(MIN_PERIOD_S, PARTIAL_PERIOD * typical)
    return [r for r, d in zip(rows, periods, strict=True) if d >= cutoff]
