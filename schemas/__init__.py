"""Record, label, event, dead-letter and feedback contracts: JSON Schema files beside this module and their Python
checks, and the class names (labels, faults) they use."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["load_schema"]


@cache
def load_schema(name: str) -> dict[str, Any]:
    """``load_schema("record")`` -> the parsed JSON Schema shipped in the package."""
    text = resources.files("netsiam.schemas").joinpath(f"{name}.schema.json").read_text()
    return dict(json.loads(text))
