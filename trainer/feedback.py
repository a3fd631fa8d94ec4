"""Operators teach the served model: a relabelled event -> its episode's windows -> prototypes -> a new version.

:func:`teach` (``netsiam feedback``, and ``netsiam learn`` for messages on ``netsiam.feedback``):

1. The event, by id (the ``raised`` or the ``cleared`` id of one episode): read from the faults topic; or,
   given only a trace file, found by running the served model over it exactly as the daemon does
   (event ids are deterministic).
2. The episode's windows: the source's samples (samples topic, or the trace) windowed as the model
   expects, those ending from the fault's start until it cleared (until the last sample if it has not).
3. The support: the windows the served model called what it raised, if there are at least
   ``prototypes.min_support``; else every window of the episode it does not call normal. A false alarm
   (label ``normal``): every window of the episode.
4. The change: a new label becomes a class (:func:`~netsiam.trainer.prototypes.add_support`); a known one
   gains points fitted on the support (its threshold never shrinks). What raised the episode loses the
   windows now nearer the new points, since the nearest prototype wins; its threshold is left as
   calibrated, so its other windows are judged as before. A false alarm whose windows were answered slower
   than their source's own (:mod:`netsiam.slowanswers`) also raises the model's slow-answer factor above them.
5. A new artifact version where the daemon serves from (:func:`netsiam.versions.publish`), with its
   lineage in the manifest; a daemon serving that directory hot-reloads it.

Refused, with nothing changed: an unknown event id, an episode of ``silent`` (no windows), fewer support
windows than ``min_support``, and support points closer than ``prototypes.min_separation`` to another
class's prototype (the label would swallow that class). Feedback already in the served model's lineage
(same event, same label) is not applied twice (``learn`` reads at least once).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from netsiam.collect.dump import episodes_from_events as intervals_from_events
from netsiam.collect.dump import read_topic_values
from netsiam.config import Config
from netsiam.errors import NetsiamError, UsageError
from netsiam.features import RAW_METRICS, derive, required_metrics
from netsiam.schemas.classes import NORMAL, SILENT
from netsiam.schemas.event import event_id as make_event_id
from netsiam.schemas.feedback import Feedback
from netsiam.schemas.record import RecordError, decode_record
from netsiam.serving import Artifact, load_artifact
from netsiam.slowanswers import MANIFEST_KEY as SLOW_KEY
from netsiam.slowanswers import factor_for, flag_trace, taught_factor
from netsiam.versions import lineage, locked, publish, writable_model
from netsiam.windowing import Windows, windows_from_records

from .detection import Event, debounce_givens, givens_events
from .prototypes import add_support, support_points

__all__ = ["ACTIONS", "Episode", "Outcome", "cli_feedback", "describe", "episode_from_events", "support_windows",
           "teach", "trace_events", "update_prototypes"]

Rows = list[tuple[str, float, tuple[float, ...]]]
# A false alarm says every window of the episode is normal, and an episode is a path through the
# embedding (onset, plateau, recovery), not one blob: up to this many k-means points cover the whole path
# (one median left its ends nearer the fault). A class keeps prototypes.method (the median): robust to
# the onset and recovery windows of the few episodes it learns from.
FALSE_ALARM_POINTS = 4
ACTIONS = ("new_class", "support", "false_alarm", "already_applied")   # what applying a feedback did


@dataclass(frozen=True)
class Episode:
    """The fault episode an event belongs to."""

    source: str
    fault: str
    started_at: float
    end: float            # the cleared event's window end; inf while the fault is active; nan: not known


@dataclass(frozen=True)
class Outcome:
    action: str           # one of ACTIONS
    label: str
    episode: Episode
    windows: int          # support windows used
    version: str          # the version served now
    parent: str
    left_out: tuple[str, ...] = ()   # classes whose prototype part of the episode sat on (that part not learned)
    slow_factor: float | None = None  # a false alarm of slow answers: the model's slow-answer factor now


def episode_from_events(events: Sequence[dict[str, Any]], event_id: str) -> Episode:
    """The episode of event ``event_id`` among fault events (dicts as published)."""
    hit = next((e for e in events if isinstance(e, dict) and e.get("event_id") == event_id), None)
    if hit is None:
        raise NetsiamError(f"no fault event with id {event_id!r}")
    try:
        src, fault, started = str(hit["source"]), str(hit["fault"]), float(hit["started_at"])
    except (KeyError, TypeError, ValueError):
        raise NetsiamError(f"event {event_id!r} is not a fault event") from None
    if fault == SILENT:
        raise NetsiamError(f"event {event_id!r} is a silent source: there are no windows to learn from")
    # raised and cleared paired as `netsiam dump --labels` pairs them; an active fault's interval ends at inf
    ends = [iv.end for iv in intervals_from_events(events, -math.inf, math.inf, {src})
            if iv.label == fault and iv.start == started]
    return Episode(src, fault, started, ends[0] if ends else math.inf)


def _decode(values: Sequence[bytes], art: Artifact, max_bytes: int) -> Rows:
    """Sample messages -> (source, ts, values) rows; what the daemon dead-lettered is left out here too."""
    required = frozenset(required_metrics(art.features))
    rows = []
    for v in values:
        try:
            r = decode_record(v, RAW_METRICS, required, max_bytes)
        except RecordError:
            continue
        rows.append((r.source, r.ts, r.values))
    return rows


def _windows(rows: Rows, art: Artifact) -> tuple[Windows, np.ndarray]:
    """Rows -> windows as the daemon makes them, and their derived features (N, T, F)."""
    w = windows_from_records(rows, art.window, len(RAW_METRICS))
    if len(w) == 0:
        raise NetsiamError(f"no complete window (length {art.window.length}) in the samples")
    return w, derive(w.raw, art.features)


def trace_events(rows: Rows, art: Artifact, cfg: Config) -> list[Event]:
    """The events the daemon serving ``art`` raises for these samples (its windows, classes and debounce)."""
    w, x = _windows(rows, art)
    return _events(w, x, art.embed(x), art, cfg)


def _events(w: Windows, x: np.ndarray, emb: np.ndarray, art: Artifact, cfg: Config) -> list[Event]:
    deb = cfg.detector.debounce
    return givens_events(w.sources, w.end_ts, debounce_givens(art, w.sources, w.end_ts, w.raw, x, emb, deb), deb)


def _episode_from_trace(w: Windows, x: np.ndarray, emb: np.ndarray, art: Artifact, cfg: Config, eid: str) -> Episode:
    """The daemon's debounce over a trace's windows (inputs ``x``, embedded ``emb``); the episode whose event id
    is ``eid``."""
    for ev in _events(w, x, emb, art, cfg):
        if eid in (make_event_id(ev.source, ev.fault, ev.started_at, s) for s in ("raised", "cleared")):
            return Episode(ev.source, ev.fault, ev.started_at, math.inf if ev.cleared_at is None else ev.cleared_at)
    raise NetsiamError(f"no fault event with id {eid!r} in this trace as the model at hand judges it "
                       "(an event of another model version? pass --bootstrap to read the faults topic)")


def support_windows(x: np.ndarray, names: np.ndarray, ep: Episode, label: str, min_support: int) -> np.ndarray:
    """Which of the episode's windows (classified ``names`` by the served model) support ``label``."""
    if label == NORMAL:
        sel = np.ones(len(x), dtype=bool)
    else:
        sel = names == ep.fault
        if sel.sum() < min_support:
            sel = names != NORMAL
    if sel.sum() < min_support:
        raise NetsiamError(f"the episode of {ep.fault} on {ep.source} has {int(sel.sum())} window(s) to learn "
                           f"{label!r} from, need at least {min_support} (prototypes.min_support)")
    return sel


def update_prototypes(art: Artifact, label: str, emb: np.ndarray, cfg: Config) -> tuple[Artifact, list[str]]:
    """A copy of ``art`` whose prototypes learned ``label`` from ``emb`` (n, D), and the classes whose
    prototype some of the support sits on (those points, and their windows, are left out: they would
    swallow that class). Refused when every point would."""
    pcfg = cfg.prototypes
    pts = support_points(emb, pcfg, points=FALSE_ALARM_POINTS if label == NORMAL else None)   # (k, D)
    protos = art.prototypes
    others = [(c, p) for c, p in zip(protos.classes, protos.points, strict=True) if c != label]
    keep, swallowed = [], []
    for i, p in enumerate(pts):
        near = min(((float(np.sqrt(((q - p) ** 2).sum(-1)).min()), c) for c, q in others), default=(np.inf, ""))
        if near[0] < pcfg.min_separation:
            swallowed.append((near[1], near[0]))
        else:
            keep.append(i)
    if not keep:
        cls, d = min(swallowed, key=lambda t: t[1])
        raise NetsiamError(f"these windows sit on {cls}'s prototype ({d:.3f} from it, prototypes.min_separation "
                           f"{pcfg.min_separation}): labelling them {label!r} would swallow {cls}")
    nearest_pt = np.sqrt(((emb[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).argmin(axis=1)   # (n,)
    mine = np.isin(nearest_pt, keep)
    if mine.sum() < pcfg.min_support:
        raise NetsiamError(f"{int(mine.sum())} window(s) of the episode are clear of other classes' prototypes "
                           f"({', '.join(sorted({c for c, _ in swallowed}))}), need at least {pcfg.min_support}")
    new = copy.copy(art)
    new.manifest = copy.deepcopy(art.manifest)
    new.prototypes = copy.deepcopy(protos)
    add_support(new.prototypes, label, emb[mine], pcfg, pts=pts[keep])
    return new, sorted({c for c, _ in swallowed})


def _fault_events(bootstrap: str, cfg: Config) -> list[Any]:
    out = []
    for v in read_topic_values(bootstrap, cfg.kafka.topics.faults, cfg.kafka):
        try:
            out.append(orjson.loads(v))
        except orjson.JSONDecodeError:
            continue
    return out


def teach(model: Path, fb: Feedback, cfg: Config, *, bootstrap: str | None = None,
          data: str | None = None) -> Outcome:
    """Apply one feedback to the artifact in ``model`` (see the module docstring); returns what it did."""
    with locked(model):
        art = load_artifact(model)
        # first: once taught, the model may no longer raise the event, so it would not be found again
        done = next((e for e in lineage(model) if e.get("event_id") == fb.event_id and e.get("label") == fb.label), None)
        if done is not None:
            ep = Episode(str(done.get("source", "?")), str(done.get("fault", "?")), float(done.get("started_at", 0.0)),
                         math.nan)   # its end is not kept in the lineage
            return Outcome("already_applied", fb.label, ep, 0, art.version, str(art.manifest.get("parent")))
        rows: Rows | None = None
        if data is not None:
            from .dataset import load_trace

            rows = load_trace(data, dataclasses.replace(cfg, window=art.window, features=art.features))
        emb_all: np.ndarray | None = None        # the whole trace embedded (trace only: it finds the event)
        if bootstrap is not None:
            ep = episode_from_events(_fault_events(bootstrap, cfg), fb.event_id)
        elif rows is not None:
            w, x = _windows(rows, art)
            emb_all = art.embed(x)
            ep = _episode_from_trace(w, x, emb_all, art, cfg, fb.event_id)
        else:
            raise UsageError("feedback needs the episode's samples: --bootstrap HOST:PORT or --data TRACE.jsonl")
        if emb_all is None:
            if rows is None:
                rows = _decode(read_topic_values(bootstrap or "", cfg.kafka.topics.samples, cfg.kafka,
                                                 key=ep.source.encode()), art, cfg.detector.max_record_bytes)
            w, x = _windows([r for r in rows if r[0] == ep.source], art)
        mine = (w.sources == ep.source) & (w.end_ts >= ep.started_at - 1e-6) & (w.end_ts < ep.end)
        if not mine.any():
            raise NetsiamError(f"no window of {ep.source} between {ep.started_at} and {ep.end} in the samples")
        emb = (art.embed(x[mine]) if emb_all is None else emb_all[mine]).astype(np.float64)   # (n, D)
        names = art.prototypes.classify(emb)[0]
        sel = support_windows(x[mine], names, ep, fb.label, cfg.prototypes.min_support)
        known = fb.label in art.prototypes.classes
        new, left_out = update_prototypes(art, fb.label, emb[sel], cfg)
        slow = _slow_taught(w, x, emb_all, new, cfg, mine) if fb.label == NORMAL else None
        if slow is not None:
            new.manifest[SLOW_KEY] = {"normal_up_to": slow}
        action = "false_alarm" if fb.label == NORMAL else "support" if known else "new_class"
        used = new.prototypes.support[new.prototypes.classes.index(fb.label)] - (
            art.prototypes.support[art.prototypes.classes.index(fb.label)] if known else 0)
        entry = {**fb.to_json(), "action": action, "source": ep.source, "fault": ep.fault,
                 "started_at": ep.started_at, "windows": used, "left_out": left_out,
                 "applied_at": round(time.time(), 3), **({"slow_answer_factor": slow} if slow is not None else {})}
        version = publish(model, new, art.version, entry)
        return Outcome(action, fb.label, ep, used, version, art.version, tuple(left_out), slow)


def _slow_taught(w: Windows, x: np.ndarray, emb_all: np.ndarray | None, art: Artifact, cfg: Config,
                 mine: np.ndarray) -> float | None:
    """A false alarm whose windows are answered slower than their source's own (:mod:`netsiam.slowanswers`):
    the factor that lets them all pass, judged over the source's windows as the daemon would judge them with
    the taught model ``art`` (windows it now reads normal may be slow); None if none is flagged."""
    factor = factor_for(cfg.detector.debounce, art.manifest)
    if factor <= 0:
        return None
    names = art.prototypes.classify(art.embed(x) if emb_all is None else emb_all)[0]
    excess = np.full(len(w), np.nan)
    flag_trace(names, w.sources, w.raw, w.end_ts, cfg.detector.debounce, art.manifest, excess)
    return taught_factor(excess[mine], factor)


def describe(out: Outcome, model: Path) -> str:
    ep = out.episode
    what = {"new_class": f"{out.label!r} is a new class", "support": f"{out.label!r} gained support",
            "false_alarm": "a false alarm: normal gained support",
            "already_applied": f"already applied ({out.label!r}): nothing changed"}[out.action]
    span = (f"from {ep.started_at:.0f}" if math.isnan(ep.end)
            else f"{ep.started_at:.0f}-{'active' if math.isinf(ep.end) else f'{ep.end:.0f}'}")
    used = f" from {out.windows} windows" if out.windows else ""
    left = (f" (part of the episode sits on the prototype of {', '.join(out.left_out)}: that part is left as it was)"
            if out.left_out else "")
    if out.slow_factor is not None:
        left += f"; answers up to {out.slow_factor:g} times slower than a source's own now pass"
    return (f"feedback: {what}{used} of the {ep.fault} episode on {ep.source} ({span}){left}; model {out.version} "
            f"(parent {out.parent}) in {model}")


def cli_feedback(args: argparse.Namespace, cfg: Config) -> int:
    """``netsiam feedback EVENT_ID --label LABEL [--bootstrap] [--model] [--data] [--by] [--note]``."""
    model = writable_model(args.model or cfg.detector.model)
    try:
        fb = Feedback(args.event_id, args.label, args.by or "", args.note or "")
    except NetsiamError as e:
        raise UsageError(str(e)) from None
    bootstrap = args.bootstrap or (None if args.data else cfg.kafka.bootstrap_servers)
    out = teach(model, fb, cfg, bootstrap=bootstrap, data=args.data)
    print(describe(out, model))
    return 0
