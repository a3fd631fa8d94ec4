"""The exceptions the CLI turns into a one-line message (no traceback), and the exit status of each.

Exit status of every verb (README, docs/cli.md): 0 done; 1 a runtime failure (a broker or service
unreachable or failing, an internal error: retrying may help); 2 a usage error (the command line);
3 a data error (an input file, trace, labels or model artifact that is missing or wrong); 4 a
configuration error (config.yaml or a NETSIAM_* override); 130 interrupted. systemd units do not
restart on 2, 3 or 4 (RestartPreventExitStatus): the same start would fail the same way.
"""

from __future__ import annotations

import os

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "ConfigError",
    "NetsiamError",
    "ServiceError",
    "UsageError",
    "debugging",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2          # argparse's own status for a bad command line
EXIT_DATA = 3
EXIT_CONFIG = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def debugging() -> bool:
    """``NETSIAM_DEBUG`` set to anything but empty, 0, false, no or off: tracebacks and every library line."""
    return os.environ.get("NETSIAM_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


class NetsiamError(Exception):
    """A user-facing error: bad input, missing file, mismatched artifact. The message is one line."""

    exit_code = EXIT_DATA


class UsageError(NetsiamError):
    """The command line asks for something impossible (beyond what argparse checks)."""

    exit_code = EXIT_USAGE


class ConfigError(NetsiamError):
    """config.yaml or an environment override is invalid; the message names the key."""

    exit_code = EXIT_CONFIG


class ServiceError(NetsiamError):
    """A service the verb needs (the broker, Prometheus) is unreachable or refused the request."""

    exit_code = EXIT_RUNTIME
