"""The real-SIPp scenario corpus (``deploy/testbed/corpus/``, recorded by ``deploy/testbed/record_sipp.py``).

Each recording is ``NAME_stat.csv.gz`` (SIPp's own statistics file), ``NAME_labels.csv`` and
``NAME_meta.json`` (what was injected, when). Names say their role, and every figure reported on the
corpus keeps to it:

* ``val_*``: the VALIDATION subset: recipes, thresholds, debounce settings and the expert rule's
  bounds are chosen on these only;
* ``unseen_*``: validation too, but no model trains on them: a choice is also checked on a testbed
  every model never saw (:attr:`Recording.trained_on`);
* ``novel_*``: recordings with ``degraded`` episodes, a class the shipped model is never trained on
  (novelty, and few-shot learning of a new class);
* every other recording is REPORTED: evaluated leave-one-recording-out, never used for a choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netsiam.errors import NetsiamError
from netsiam.importers.sipp import import_sipp
from netsiam.traceio import write_trace

__all__ = ["CORPUS_DIR", "NOVEL_LABEL", "Recording", "load_corpus", "role_of", "to_traces"]

CORPUS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "testbed" / "corpus"
NOVEL_LABEL = "degraded"


def role_of(name: str) -> str:
    """A recording's role by its name: validation | unseen | novel | reported."""
    for prefix, role in (("val_", "validation"), ("unseen_", "unseen"), ("novel_", "novel")):
        if name.startswith(prefix):
            return role
    return "reported"


@dataclass(frozen=True)
class Recording:
    name: str
    source: str
    stat: Path
    labels: Path
    meta: dict[str, Any]

    @property
    def role(self) -> str:
        """validation | unseen | novel | reported (:func:`role_of`)"""
        return role_of(self.name)

    @property
    def trained_on(self) -> bool:
        """Whether a model may train on it (leave-one-out models: every such recording but the one held
        out; the shipped model: these, novel ones excepted)."""
        return self.role != "unseen"

    @property
    def rate(self) -> float:
        return float(self.meta["spec"]["rate"])

    @property
    def hold_s(self) -> float:
        return float(self.meta["spec"]["hold_s"])


def load_corpus(directory: str | Path = CORPUS_DIR) -> list[Recording]:
    """Every recording in ``directory``, sorted by name."""
    d = Path(directory)
    out = []
    for meta_path in sorted(d.glob("*_meta.json")):
        name = meta_path.name.removesuffix("_meta.json")
        meta = json.loads(meta_path.read_text())
        stat, labels = d / f"{name}_stat.csv.gz", d / f"{name}_labels.csv"
        if not stat.is_file() or not labels.is_file():
            raise NetsiamError(f"{d}: recording {name} lacks {stat.name} or {labels.name}")
        out.append(Recording(name, meta["spec"]["source"], stat, labels, meta))
    if not out:
        raise NetsiamError(f"{d}: no recordings (NAME_meta.json)")
    return out


def to_traces(recordings: list[Recording], directory: str | Path) -> dict[str, tuple[Path, Path]]:
    """Import each recording into ``directory/NAME.jsonl`` once; -> name -> (trace, labels)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for r in recordings:
        trace = d / f"{r.name}.jsonl"
        if not trace.is_file() or trace.stat().st_mtime < r.stat.stat().st_mtime:
            write_trace(trace, import_sipp([r.stat], r.source))
        out[r.name] = (trace, r.labels)
    return out
