"""Class names that are contract values: labels in label files and feedback, ``fault`` in events.

The one definition everything imports (trainer, detector, serving, debounce, plots).
"""

from __future__ import annotations

__all__ = ["BLOCKED", "CAPACITY_LIMIT", "KNOWN_LABELS", "NORMAL", "SILENT", "UNKNOWN", "VERDICTS"]

NORMAL = "normal"                  # time no label interval covers
BLOCKED = "blocked"                # all traffic blocked
CAPACITY_LIMIT = "capacity_limit"  # the path admits only part of the offered load
UNKNOWN = "unknown"                # the novelty verdict: far from every prototype; never a label
SILENT = "silent"                  # the daemon's verdict on a source that stopped sending; reserved
KNOWN_LABELS = (NORMAL, BLOCKED, CAPACITY_LIMIT)
VERDICTS = (UNKNOWN, SILENT)   # the detector's own verdicts: never a label that trains or scores
