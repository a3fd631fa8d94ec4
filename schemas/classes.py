"""Class names that are contract values: labels in label files and feedback, ``fault`` in events.

The one definition everything imports (trainer, detector, serving, debounce, plots).
"""

from __future__ import annotations

import re

__all__ = ["BLOCKED", "CAPACITY_LIMIT", "KNOWN_LABELS", "LABEL_RULE", "NORMAL", "SILENT", "UNKNOWN", "VERDICTS",
           "is_label_name"]

NORMAL = "normal"                  # time no label interval covers
BLOCKED = "blocked"                # all traffic blocked
CAPACITY_LIMIT = "capacity_limit"  # the path admits only part of the offered load
UNKNOWN = "unknown"                # the novelty verdict: far from every prototype; never a label
SILENT = "silent"                  # the daemon's verdict on a source that stopped sending; reserved
KNOWN_LABELS = (NORMAL, BLOCKED, CAPACITY_LIMIT)
VERDICTS = (UNKNOWN, SILENT)   # the detector's own verdicts: never a label that trains or scores

_LABEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")   # labels.schema.json's and feedback.schema.json's pattern
LABEL_RULE = "letters, digits, _ . -; starts with a letter; at most 64"


def is_label_name(name: str) -> bool:
    """May ``name`` be a class: in a labels CSV, a feedback message, ``prototypes add --name``?"""
    return _LABEL_RE.fullmatch(name) is not None
