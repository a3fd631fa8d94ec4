"""A daemon's ``/metrics`` over HTTP, parsed by prometheus_client's own exposition-format parser."""

from __future__ import annotations

import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["Scrape", "scrape", "without"]


class Scrape:
    """The samples of one scrape."""

    def __init__(self, text: str) -> None:
        self.samples: list[Sample] = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
        return float(sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()))

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        """Cumulative ``(le, count)`` of a histogram, in order of ``le``."""
        return sorted((float(s.labels["le"]), s.value) for s in self.samples if s.name == f"{histogram}_bucket")


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0, drop: tuple[str, ...] = (),
           names: tuple[str, ...] = ()) -> Scrape:
    """``drop``: metric names whose lines are left out before parsing (a per-source series of
    thousands of lines costs the parser more than everything else together). ``names``: only these
    metrics are asked for (prometheus_client's ``name[]`` filter: the daemon renders nothing else)."""
    query = "?" + urllib.parse.urlencode([("name[]", n) for n in names]) if names else ""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics{query}", timeout=timeout_s) as r:  # noqa: S310 - loopback
        return Scrape(without(r.read().decode(), drop))


def without(text: str, drop: tuple[str, ...]) -> str:
    """The exposition ``text`` less the lines (samples, HELP, TYPE) of the metrics named in ``drop``."""
    if not drop:
        return text
    prefixes = (*drop, *(f"# {w} {d}" for w in ("HELP", "TYPE") for d in drop))
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(prefixes)) + "\n"
