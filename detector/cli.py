"""``netsiam detect``: load the model, install the signal handlers, run the daemon until stopped.

SIGTERM/SIGINT drain, wait for acks, commit and exit 0; SIGHUP reloads the model (it also reloads
when its files change). The exit status is 1 when publishing failed for good (nothing committed).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from netsiam.config import Config, override
from netsiam.serving import default_model_path, load_artifact

from .loop import Daemon
from .reload import freeze_heap, warm_up

__all__ = ["GIL_SWITCH_S", "cli_detect", "setup_logging"]

log = logging.getLogger("netsiam.detector")

# Three threads share the GIL: the main loop (decode, windows, debounce), the embed thread (it takes
# the GIL back after each TensorFlow call) and kafka-python's network thread. At Python's default
# 5 ms a thread asking for the GIL waits up to that long while the main loop decodes; at 1 ms one
# daemon catching up a backlog measured 28k -> 30k records/s (docs/throughput.md).
GIL_SWITCH_S = 0.001


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cli_detect(args: Any, cfg: Config) -> int:
    """``netsiam detect --config C [--bootstrap H:P] [--model DIR] [--metrics-port P] [--group G]``."""
    setup_logging()
    sys.setswitchinterval(GIL_SWITCH_S)
    # handlers first: a SIGTERM while the model loads (seconds) is a clean stop, not a kill
    stopping = threading.Event()
    daemons: list[Daemon] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: draining", signal.Signals(signum).name)
        stopping.set()
        for d in daemons:
            d.request_stop()

    def hup(signum: int, frame: FrameType | None) -> None:
        for d in daemons:
            d.request_reload()

    handlers: dict[int, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: hup}
    for sig, h in handlers.items():
        signal.signal(sig, h)
    cfg = override(cfg, {"kafka.bootstrap_servers": args.bootstrap, "detector.model": args.model,
                         "metrics.port": args.metrics_port, "kafka.group_id": args.group})
    model_path = Path(cfg.detector.model) if cfg.detector.model else default_model_path()
    art = load_artifact(model_path)
    warm_up(art)
    log.info("model loaded path=%s version=%s window=%d/%d features=%s classes=%s", model_path, art.version,
             art.window.length, art.window.stride, ",".join(art.features), ",".join(art.prototypes.classes))
    freeze_heap()
    daemon = Daemon(cfg, art, model_path)
    daemons.append(daemon)
    if stopping.is_set():
        daemon.request_stop()
    return daemon.run()
