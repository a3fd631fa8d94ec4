"""Where the CLI's configuration comes from, and environment overrides of single keys.

The file, first found of: ``--config FILE``; ``$NETSIAM_CONFIG``; ``/etc/netsiam/config.yaml``;
none (the built-in defaults, the values ``config.yaml`` lists). Then every environment variable
``NETSIAM_<SECTION>__<KEY>`` (double underscores between levels, any case) replaces that one key, e.g.
``NETSIAM_KAFKA__SASL_PASSWORD`` or ``NETSIAM_DETECTOR__DEBOUNCE__RAISE_K=3``, so a secret never
needs to be in a file; ``NETSIAM_<...>_FILE=/path`` reads the value from a file instead (systemd
``LoadCredential=`` hands such files to a service). A top-level key takes its name alone
(``NETSIAM_FEATURES``); a section's name alone (``NETSIAM_WINDOW``) is refused. Other ``NETSIAM_*`` variables
without ``__`` (``NETSIAM_CONFIG``, ``NETSIAM_DEBUG``, ``NETSIAM_LOG_LEVEL``) are not overrides. The result is
validated like a file, and an override of a key that does not exist is an error naming the variable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from netsiam.config import Config, from_dict, read_config_data
from netsiam.errors import ConfigError

__all__ = ["ENV_CONFIG", "ENV_PREFIX", "SYSTEM_CONFIG", "ConfigChoice", "env_overrides", "resolve_config"]

log = logging.getLogger("netsiam.config")

SYSTEM_CONFIG = Path("/etc/netsiam/config.yaml")
ENV_CONFIG = "NETSIAM_CONFIG"
ENV_PREFIX = "NETSIAM_"
_SEP = "__"
_FILE_SUFFIX = "_FILE"


@dataclass(frozen=True)
class ConfigChoice:
    """Which file was used (None: the built-in defaults), why, and which keys the environment set."""

    path: Path | None
    why: str
    overrides: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f"{self.path} ({self.why})" if self.path else "built-in defaults (no --config, $NETSIAM_CONFIG " \
                f"unset, no {SYSTEM_CONFIG})"
        env = f"; environment overrides: {', '.join(self.overrides)}" if self.overrides else ""
        return f"config: {where}{env}"


def _locate(flag: str | None, env: Mapping[str, str], system: Path) -> tuple[Path | None, str]:
    if flag:
        return Path(flag), "--config"
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]), f"${ENV_CONFIG}"
    if system.is_file():
        return system, "system config"
    return None, "built-in defaults"


def _field_type(cls: Any, path: list[str], var: str) -> Any:
    """The annotation of the dotted key ``path`` under dataclass ``cls`` (ConfigError if none)."""
    tp: Any = cls
    for i, name in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{var}: {'.'.join(path[:i])} has no sub-keys")
        hints = typing.get_type_hints(tp)
        if name not in hints:
            raise ConfigError(f"{var}: unknown key {'.'.join(path[:i + 1])} "
                              f"(known: {', '.join(sorted(hints))})")
        tp = hints[name]
    if dataclasses.is_dataclass(tp):
        hint = " (the model served is detector.model: NETSIAM_DETECTOR__MODEL)" if path == ["model"] else ""
        raise ConfigError(f"{var}: {'.'.join(path)} is a section; set its keys one by one{hint}")
    return tp


def _typed(raw: str, tp: Any, var: str) -> Any:
    """A string from the environment as the key's type: str verbatim (a password may look like a
    number), everything else parsed as a YAML scalar or list, then checked by from_dict."""
    if tp is str:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"{var}: not a valid value: {raw!r}") from None


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``{"kafka.sasl_password": "..."}`` from ``NETSIAM_*__*`` variables and ``NETSIAM_<TOP-LEVEL KEY>`` (values
    typed per key)."""
    out: dict[str, Any] = {}
    top = {f.name for f in dataclasses.fields(Config)}
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        if _SEP not in var and var[len(ENV_PREFIX):].lower().removesuffix(_FILE_SUFFIX.lower()) not in top:
            continue   # NETSIAM_CONFIG, NETSIAM_DEBUG, NETSIAM_LOG_LEVEL: not overrides; NETSIAM_FEATURES is one
        name, raw = var[len(ENV_PREFIX):].lower(), env[var]
        from_file = name.endswith(_FILE_SUFFIX.lower())
        if from_file:
            name = name[: -len(_FILE_SUFFIX)]
            try:
                raw = Path(raw).read_text().removesuffix("\n")
            except OSError as e:
                raise ConfigError(f"{var}: cannot read {raw}: {e.strerror or e}") from None
        path = name.split(_SEP)
        if any(not part for part in path):
            raise ConfigError(f"{var}: empty key part (use exactly two underscores between levels)")
        key = ".".join(path)
        if key in out:
            raise ConfigError(f"{var}: {key} is set twice (with and without {_FILE_SUFFIX})")
        out[key] = _typed(raw, _field_type(Config, path, var), var)
    return out


def _merge(data: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in dotted.items():
        *heads, last = key.split(".")
        node = merged
        for h in heads:
            nxt = node.get(h)
            node[h] = nxt = dict(nxt) if isinstance(nxt, dict) else {}
            node = nxt
        node[last] = value
    return merged


def resolve_config(flag: str | None = None, env: Mapping[str, str] | None = None,
                   system: Path = SYSTEM_CONFIG) -> tuple[Config, ConfigChoice]:
    """The validated configuration and where it came from (see the module docstring)."""
    env = os.environ if env is None else env
    path, why = _locate(flag, env, system)
    data = read_config_data(path) if path is not None else {}
    dotted = env_overrides(env)
    try:
        cfg = from_dict(Config, _merge(data, dotted))
    except ConfigError as e:
        if dotted:  # the environment may be the culprit: say which keys it set
            raise ConfigError(f"{e} (file: {path or 'built-in defaults'}; environment overrides: "
                              f"{', '.join(dotted)})") from None
        raise
    return cfg, ConfigChoice(path, why, tuple(dotted))
