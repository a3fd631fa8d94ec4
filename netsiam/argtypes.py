"""argparse types for numbers a user types: a bad value is a usage error (exit 2) that names the flag,
not a traceback from deep inside the verb (a port argparse took as an int, a NaN the simulator met)."""

from __future__ import annotations

import argparse
import math

__all__ = ["finite", "port", "positive"]


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: any free port, where the flag allows it)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {n}")
    return n


def finite(text: str) -> float:
    """A finite number (no nan or inf)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return x


def positive(text: str) -> int:
    """A whole number >= 1 (epochs, candidates, sources, examples)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n
