"""argparse types for numbers a user types: a bad value is a usage error (exit 2) that names the flag,
not a traceback from deep inside the verb (a port argparse took as an int, a NaN the simulator met)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

__all__ = ["bootstrap", "finite", "http_url", "port", "positive", "positive_finite", "seed", "source"]

T = TypeVar("T")


def _parsed(text: str, kind: Callable[[str], T], what: str) -> T:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: any free port, where the flag allows it)."""
    n = _parsed(text, int, "a port number")
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {n}")
    return n


def finite(text: str) -> float:
    """A finite number (no nan or inf)."""
    x = _parsed(text, float, "a number")
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return x


def positive_finite(text: str) -> float:
    """A finite number > 0 (a length of time, a speed)."""
    x = finite(text)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return x


def positive(text: str) -> int:
    """A whole number >= 1 (epochs, candidates, sources, examples)."""
    n = _parsed(text, int, "a whole number")
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def seed(text: str) -> int:
    """A random seed, 0 to 2**32 - 1 (what numpy and Keras both take)."""
    n = _parsed(text, int, "a whole number")
    if not 0 <= n < 2**32:
        raise argparse.ArgumentTypeError(f"must be 0 to 2**32 - 1, got {n}")
    return n


def bootstrap(text: str) -> str:
    """A Kafka bootstrap list, ``HOST:PORT[,HOST:PORT...]`` (what ``kafka.bootstrap_servers`` takes)."""
    from netsiam.config import bootstrap_problem

    why = bootstrap_problem(text)
    if why is not None:
        raise argparse.ArgumentTypeError(f"not HOST:PORT[,HOST:PORT...]: {why}")
    return text


def source(text: str) -> str:
    """A source name a record may carry (1-256 characters of valid Unicode)."""
    from netsiam.schemas.record import source_problem

    why = source_problem(text)
    if why is not None:
        raise argparse.ArgumentTypeError(why.replace("'source'", "a source name"))
    return text


def http_url(text: str) -> str:
    """An http:// or https:// URL with a host (a Prometheus server)."""
    from urllib.parse import urlsplit

    u = urlsplit(text)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text!r}")
    return text
