"""Trace files (JSON Lines of signalling records) and label files (CSV), read and written.

A record is ``{"source": str, "ts": float, "metrics": {name: number}}`` (schemas/record.schema.json).
Labels are ``source,start,end,label`` rows; time not covered by a row is ``normal``.
A path of ``-`` reads standard input or writes standard output.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from netsiam.errors import NetsiamError

__all__ = [
    "STDIO",
    "LabelInterval",
    "Record",
    "atomic_write_bytes",
    "read_labels",
    "read_trace",
    "require_inputs",
    "write_labels",
    "write_trace",
]

LABEL_FIELDS = ("source", "start", "end", "label")
STDIO = "-"  # as a path: standard input when read, standard output when written


@dataclass(frozen=True, slots=True)
class Record:
    source: str
    ts: float
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "ts": self.ts, "metrics": self.metrics}


@dataclass(frozen=True, slots=True)
class LabelInterval:
    source: str
    start: float
    end: float
    label: str


def _missing_file(what: str, path: str | os.PathLike[str]) -> NetsiamError:
    """The error for an input file that is not there, or is a directory (``what``: trace, labels, ...)."""
    p = Path(path)
    return NetsiamError(f"{what} file {'is a directory' if p.is_dir() else 'not found'}: {p}")


def require_inputs(traces: Sequence[str | os.PathLike[str]], labels: Sequence[str | os.PathLike[str]]) -> None:
    """Every trace and labels file a verb was given is a file (``-`` is spooled to one first), said before a
    slow import or model load: a typo fails in a moment."""
    for what, paths in (("trace", traces), ("labels", labels)):
        for p in paths:
            if not Path(p).is_file():
                raise _missing_file(what, p)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file so readers see the old or the new content, never a torn one (``-``: stdout)."""
    if os.fspath(path) == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(path)
    if path.exists() and not path.is_file():
        # /dev/null, a FIFO, /dev/stdout: written into, never replaced (a rename would put a regular
        # file in place of the device node)
        with path.open("wb") as f:
            f.write(data)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:   # name the file asked for, not the temporary one beside it
        raise type(e)(e.errno, e.strerror, os.fspath(path)) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file a normal file's mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_trace(path: str | os.PathLike[str], records: Iterable[Record | dict[str, Any]]) -> int:
    """Write records as JSON Lines; returns the number written."""
    n = 0
    buf = io.BytesIO()
    for r in records:
        obj = r.to_json() if isinstance(r, Record) else r
        buf.write(orjson.dumps(obj))
        buf.write(b"\n")
        n += 1
    atomic_write_bytes(path, buf.getvalue())
    return n


def read_trace(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw bytes) of each non-empty line; decoding is the schema module's job."""
    if os.fspath(path) == STDIO:
        yield from _lines(sys.stdin.buffer)
        return
    p = Path(path)
    if not p.is_file():
        raise _missing_file("trace", p)
    with p.open("rb") as f:
        yield from _lines(f)


def _lines(f: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    for lineno, line in enumerate(f, start=1):
        line = line.strip()
        if line:
            yield lineno, line


def write_labels(path: str | os.PathLike[str], intervals: Iterable[LabelInterval]) -> int:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(LABEL_FIELDS)
    n = 0
    for iv in intervals:
        w.writerow([iv.source, f"{iv.start:.3f}", f"{iv.end:.3f}", iv.label])
        n += 1
    atomic_write_bytes(path, out.getvalue().encode())
    return n


def read_labels(path: str | os.PathLike[str]) -> list[LabelInterval]:
    """Read and validate a labels CSV (see schemas.labels for the row rules)."""
    if os.fspath(path) == STDIO:
        return _labels(io.TextIOWrapper(sys.stdin.buffer, newline="", encoding="utf-8-sig"), "<stdin>")
    p = Path(path)
    if not p.is_file():
        raise _missing_file("labels", p)
    with p.open(newline="", encoding="utf-8-sig") as f:   # -sig: a spreadsheet's byte-order mark is not the header
        return _labels(f, str(p))


def _labels(f: Iterable[str], name: str) -> list[LabelInterval]:
    from netsiam.schemas.labels import parse_label_row

    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    while header and not header[-1]:   # a spreadsheet's empty trailing columns
        header.pop()
    if header != list(LABEL_FIELDS):
        raise NetsiamError(f"{name}: not a labels CSV (header must be {','.join(LABEL_FIELDS)})")
    out = []
    for i, fields in enumerate(reader, start=2):
        if not fields:
            continue   # a blank line
        while len(fields) > len(LABEL_FIELDS) and not fields[-1].strip():
            fields.pop()
        if len(fields) != len(LABEL_FIELDS):
            raise NetsiamError(f"{name}:{i}: {len(fields)} field(s), a row has 4: {','.join(LABEL_FIELDS)}")
        row: dict[str, str | None] = dict(zip(LABEL_FIELDS, fields, strict=True))
        out.append(parse_label_row(row, where=f"{name}:{i}"))
    return out
