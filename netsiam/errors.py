"""The one exception type the CLI turns into a one-line message (no traceback)."""

from __future__ import annotations

__all__ = ["NetsiamError"]


class NetsiamError(Exception):
    """A user-facing error: bad input, missing file, mismatched artifact. The message is one line."""
