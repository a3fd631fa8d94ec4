"""Versions of a served model artifact: publish a new one in place, list them, roll back.

The daemon serves from one directory (``encoder.keras``, ``prototypes.json``, ``manifest.json``) and
reloads it when its files change. A change (feedback, rollback) first keeps a copy of what is served
under ``versions/<version>/`` beside it, then replaces the served files, the manifest last (it holds
the others' hashes, so a reader never pairs one version's manifest with another's prototypes).
``versions/log.jsonl`` records every change: when, what, by whom. A version is
:attr:`netsiam.serving.Artifact.version`, the ``model_version`` every event carries, so an operator
can roll back to the version an event names. One change at a time per directory (an ``flock``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from netsiam.errors import NetsiamError, UsageError
from netsiam.serving import (
    ENCODER_FILE,
    MANIFEST_FILE,
    PROTOTYPES_FILE,
    Artifact,
    Prototypes,
    artifact_version,
    default_model_path,
    load_artifact,
)
from netsiam.traceio import atomic_write_bytes

__all__ = ["LOG_FILE", "VERSIONS_DIR", "VersionInfo", "history", "is_shipped", "lineage", "locked", "publish", "rollback",
           "writable_model"]

VERSIONS_DIR = "versions"
LOG_FILE = "log.jsonl"
FILES = (ENCODER_FILE, PROTOTYPES_FILE, MANIFEST_FILE)   # the order a version is written in: manifest last


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created_at: float
    parent: str | None
    feedback: dict[str, Any] | None
    classes: tuple[str, ...]
    current: bool


def is_shipped(path: str | Path) -> bool:
    """Is ``path`` the model shipped in the package (package data: only ``make model`` writes it)?"""
    return Path(path).resolve() == default_model_path().resolve()


def writable_model(path: str | Path | None) -> Path:
    """The artifact directory a change goes to; the shipped model (package data) is never changed."""
    if not path:
        raise UsageError("no model to change: pass --model DIR (a copy of the model the daemon serves "
                         "from, e.g. made by `netsiam model copy DIR`) or set detector.model")
    p = Path(path)
    if is_shipped(p):
        raise UsageError(f"{p} is the model shipped in the package; `netsiam model copy DIR` makes a copy to "
                         "serve (detect --model DIR) and teach")
    if not (p / MANIFEST_FILE).is_file():
        raise NetsiamError(f"model artifact not found: {p}")
    if not os.access(p, os.W_OK):
        raise NetsiamError(f"model artifact {p} is not writable")
    return p


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One change at a time in ``path`` (``netsiam feedback`` beside ``netsiam learn``)."""
    with open(path / ".netsiam.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _log(path: Path, entry: dict[str, Any]) -> None:
    d = path / VERSIONS_DIR
    d.mkdir(exist_ok=True)
    with open(d / LOG_FILE, "ab") as f:
        f.write(orjson.dumps({"at": round(time.time(), 3), **entry}) + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _keep(path: Path, version: str) -> None:
    """Copy the served files (version ``version``) into ``versions/<version>/`` (once; a half-copied one
    never counts)."""
    dest = path / VERSIONS_DIR / version
    if (dest / MANIFEST_FILE).is_file():
        return
    tmp = path / VERSIONS_DIR / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        shutil.copy2(path / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _install(path: Path, files: dict[str, bytes]) -> None:
    """Replace the served files, each atomically, the manifest last."""
    for name in FILES:
        if name in files and (not (path / name).is_file() or (path / name).read_bytes() != files[name]):
            atomic_write_bytes(path / name, files[name])


def publish(path: Path, art: Artifact, parent: str, entry: dict[str, Any], action: str = "feedback") -> str:
    """Serve ``art`` (its prototypes changed from version ``parent``, the one served from ``path`` now).

    Keeps ``parent`` under ``versions/``, writes the lineage into the new manifest (``parent``: its version;
    ``feedback``: ``entry``, what changed), logs the change as ``action`` (``feedback``, ``prototypes``) and
    returns the new version.
    """
    _keep(path, parent)
    art.manifest["parent"] = parent
    art.manifest["feedback"] = entry
    art.manifest["created_at"] = round(time.time(), 3)
    art.save_prototypes(path)          # prototypes.json, then manifest.json (with its hash)
    _keep(path, art.version)           # the new version is restorable too, whatever comes next
    _log(path, {"action": action, "version": art.version, "parent": parent, "feedback": entry})
    return art.version


def _info(manifest: dict[str, Any], version: str, classes: tuple[str, ...], current: bool) -> VersionInfo:
    return VersionInfo(version, float(manifest.get("created_at", 0.0)), manifest.get("parent"),
                       manifest.get("feedback"), classes, current)


def _read_version(d: Path) -> tuple[dict[str, Any], Prototypes]:
    """A version's manifest and prototypes, from its files alone (no encoder: listing needs no Keras)."""
    try:
        manifest = orjson.loads((d / MANIFEST_FILE).read_bytes())
        protos = Prototypes.from_json(orjson.loads((d / PROTOTYPES_FILE).read_bytes()))
        if not isinstance(manifest, dict) or "version" not in manifest:
            raise KeyError("version")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, NetsiamError) as e:
        raise NetsiamError(f"{d}: not a readable version ({e})") from None
    return manifest, protos


def _served(path: Path) -> tuple[str, dict[str, Any], Prototypes]:
    """The version served from ``path``, its manifest and prototypes."""
    if not (path / MANIFEST_FILE).is_file():
        raise NetsiamError(f"model artifact not found: {path}")   # the words writable_model and detect use
    manifest, protos = _read_version(path)
    return artifact_version(manifest, protos), manifest, protos


def history(path: Path) -> list[VersionInfo]:
    """Every kept version and the served one, oldest first."""
    version, manifest, protos = _served(path)
    out = {version: _info(manifest, version, tuple(protos.classes), True)}
    root = path / VERSIONS_DIR
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and not d.name.startswith(".") and d.name not in out and (d / MANIFEST_FILE).is_file():
            kept, kept_protos = _read_version(d)
            out[d.name] = _info(kept, d.name, tuple(kept_protos.classes), False)
    return sorted(out.values(), key=lambda v: (v.created_at, v.version))


def lineage(path: Path) -> list[dict[str, Any]]:
    """The feedback entries of the served version and its ancestors, newest first."""
    out: list[dict[str, Any]] = []
    manifest: dict[str, Any] | None = orjson.loads((path / MANIFEST_FILE).read_bytes())
    seen: set[str] = set()
    while manifest is not None:
        if isinstance(manifest.get("feedback"), dict):
            out.append(manifest["feedback"])
        parent = manifest.get("parent")
        if not isinstance(parent, str) or parent in seen or not (path / VERSIONS_DIR / parent / MANIFEST_FILE).is_file():
            break
        seen.add(parent)
        manifest = _read_version(path / VERSIONS_DIR / parent)[0]
    return out


def rollback(path: Path, version: str, by: str = "") -> str:
    """Serve the kept ``version`` again (the one served now is kept first). Returns the version."""
    served = _served(path)[0]
    if version == served:
        return version
    src = path / VERSIONS_DIR / version
    # a version is a directory name under versions/, never a path that leads out of it
    if Path(version).name != version or version.startswith(".") or not (src / MANIFEST_FILE).is_file():
        known = ", ".join(v.version for v in history(path))
        raise NetsiamError(f"no version {version!r} in {path / VERSIONS_DIR} (versions: {known})")
    load_artifact(src)                 # refuse a damaged copy before anything is replaced
    _keep(path, served)
    _install(path, {name: (src / name).read_bytes() for name in FILES})
    _log(path, {"action": "rollback", "version": version, "parent": served, "by": by})
    return version
