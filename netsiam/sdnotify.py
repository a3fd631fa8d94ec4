"""systemd service notifications (sd_notify(3)) with the standard library only.

A unit with ``Type=notify`` starts when the process sends ``READY=1`` to ``$NOTIFY_SOCKET``; with
``WatchdogSec=`` systemd restarts it when no ``WATCHDOG=1`` arrives for that long. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon and collectors call these freely.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Watchdog", "notify"]


def notify(*states: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``, ``STOPPING=1``); False when not under
    systemd or the socket is gone (never raises: a notification is never worth a crash)."""
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr or not states:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(states).encode())
        return True
    except OSError:
        return False


class Watchdog:
    """Sends ``WATCHDOG=1`` at most every quarter of ``$WATCHDOG_USEC`` (systemd's advice is half;
    a quarter leaves room for a slow round). Disabled when systemd set no watchdog for this process."""

    def __init__(self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        self._env = env
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ok = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.interval_s = int(usec) / 1e6 if ok else 0.0
        self._clock = clock
        self._last = -float("inf")

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def ping(self) -> bool:
        """Tell systemd the caller made progress; True when a notification was sent."""
        if not self.enabled:
            return False
        now = self._clock()
        if now - self._last < self.interval_s / 4:
            return False
        self._last = now
        return notify("WATCHDOG=1", env=self._env)
