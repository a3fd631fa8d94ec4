"""``netsiam model history|rollback|copy``: the versions of a served model artifact (:mod:`netsiam.versions`)."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

import orjson

from netsiam.config import Config
from netsiam.errors import NetsiamError
from netsiam.serving import ENCODER_FILE, MANIFEST_FILE, PROTOTYPES_FILE, default_model_path, load_artifact
from netsiam.versions import VersionInfo, history, locked, rollback, writable_model

__all__ = ["cli_model", "format_history"]


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def format_history(versions: list[VersionInfo]) -> str:
    """One line per version, oldest first; ``*`` marks the one served."""
    lines = []
    for v in versions:
        fb = v.feedback or {}
        if not fb:
            why = "trained"
        elif "event_id" in fb:   # feedback on an event
            why = (f"{fb.get('action', 'feedback')}: event {fb['event_id']} -> {fb.get('label', '?')}"
                   f"{' by ' + fb['by'] if fb.get('by') else ''}")
        else:                    # prototypes add/remove
            why = f"prototypes {fb.get('action', '?')} {fb.get('label', '?')}"
        lines.append(f"{'*' if v.current else ' '} {v.version}  {_when(v.created_at)}  {why}  "
                     f"[{', '.join(v.classes)}]" + (f"  parent {v.parent}" if v.parent else ""))
    return "\n".join(lines)


def cli_model(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "copy":
        src = Path(args.model) if args.model else default_model_path()
        dest = Path(args.directory)
        if dest.exists() and any(dest.iterdir()):
            raise NetsiamError(f"{dest} exists and is not empty")
        load_artifact(src)   # copy only a good artifact
        dest.mkdir(parents=True, exist_ok=True)
        for name in (ENCODER_FILE, PROTOTYPES_FILE, MANIFEST_FILE):
            shutil.copy2(src / name, dest / name)
        print(f"copied the model {src} to {dest}: serve it with `netsiam detect --model {dest}`")
        return 0
    model = writable_model(args.model or cfg.detector.model) if args.action == "rollback" else \
        Path(args.model or cfg.detector.model or default_model_path())
    if args.action == "history":
        versions = history(model)
        if args.json:
            sys.stdout.buffer.write(orjson.dumps([v.__dict__ for v in versions], option=orjson.OPT_INDENT_2) + b"\n")
        else:
            print(format_history(versions))
        return 0
    if args.action == "rollback":
        with locked(model):
            version = rollback(model, args.version, by=args.by or "")
        print(f"model {model} serves {version} again (a daemon serving it reloads it)")
        return 0
    raise NetsiamError(f"unknown model action {args.action!r}")
