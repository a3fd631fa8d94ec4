"""``netsiam <verb>``: argument parsing, configuration, logging and exit status. Each verb's work lives
in its own module (:data:`HANDLERS`); the parsers are in :mod:`netsiam.cli_args`.

Conventions every verb follows (docs/cli.md):

- errors a user can fix end with a one-line message, never a traceback (NETSIAM_DEBUG=1 shows one
  for an internal error); the exit status says which kind (:mod:`netsiam.errors`): 1 runtime, 2 usage,
  3 data, 4 configuration;
- the configuration is ``--config``, else ``$NETSIAM_CONFIG``, else ``/etc/netsiam/config.yaml``,
  else the built-in defaults, with ``NETSIAM_<SECTION>__<KEY>`` overrides (:mod:`netsiam.settings`);
  the choice is logged at INFO;
- ``-`` reads standard input where a file is read and writes standard output where one is written;
  while data goes to stdout, a verb's own messages go to stderr;
- TensorFlow's start-up lines are kept out of the output (:mod:`netsiam.quiet`), and a host with
  PyTorch but no TensorFlow serves with ``KERAS_BACKEND=torch`` without being told.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from netsiam import quiet
from netsiam.cli_args import build_parser
from netsiam.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_RUNTIME, NetsiamError, UsageError, debugging

__all__ = ["HANDLERS", "build_parser", "main"]

log = logging.getLogger("netsiam.cli")

# verb -> "module:function"; functions take (args, cfg) and return an exit code
HANDLERS = {
    "simulate": "netsiam.trainer.simulate_cli:cli_simulate",
    "import": "netsiam.importers.cli:cli_import",
    "train": "netsiam.trainer.train:cli_train",
    "evaluate": "netsiam.trainer.evaluate_cli:cli_evaluate",
    "prototypes": "netsiam.trainer.prototypes:cli_prototypes",
    "replay": "netsiam.replay:cli_replay",
    "detect": "netsiam.detector.cli:cli_detect",
    "broker": "netsiam.broker.embedded:cli_broker",
    "plot": "netsiam.trainer.plots:cli_plot",
    "collect": "netsiam.collect.cli:cli_collect",
    "dump": "netsiam.collect.cli:cli_dump",
    "feedback": "netsiam.trainer.feedback:cli_feedback",
    "learn": "netsiam.trainer.learn:cli_learn",
    "model": "netsiam.model_cli:cli_model",
}

LONG_RUNNING = {"detect", "broker", "collect", "learn"}   # their log lines carry a timestamp
# Arguments naming files a verb reads whose module opens them by path (possibly twice): ``-`` is
# spooled to a temporary file first. replay and import read ``-`` themselves, as a stream.
SPOOLED_INPUTS = {"train": ("data", "labels"), "evaluate": ("data", "labels"), "prototypes": ("data", "labels"),
                  "plot": ("data", "labels")}
OUTPUTS = {"simulate": ("output", "labels"), "import": ("output",), "evaluate": ("json_out",), "dump": ("output",),
           "collect": ("output",)}


def _setup_logging(verb: str) -> None:
    """netsiam's own loggers at INFO (or $NETSIAM_LOG_LEVEL), everyone else's at WARNING, on stderr."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verb in LONG_RUNNING else "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=fmt)
    from netsiam.kafka_io import install_log_filter

    install_log_filter()   # a broker that is away: one line of ours, not kafka-python's every second
    level = os.environ.get("NETSIAM_LOG_LEVEL", "INFO").upper()
    logging.getLogger("netsiam").setLevel(level if level in logging.getLevelNamesMapping() else logging.INFO)


def _choose_backend() -> None:
    """KERAS_BACKEND=torch on a host with PyTorch and no TensorFlow (``pip install netsiam[torch]``),
    unless the operator chose a backend. Looks up the packages without importing them."""
    if "KERAS_BACKEND" in os.environ or sys.modules.get("tensorflow") is not None:
        return
    if not _installed("tensorflow") and _installed("torch"):
        os.environ["KERAS_BACKEND"] = "torch"


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _TextToStderr(io.TextIOBase):
    """``sys.stdout`` while a verb writes its data to stdout (``-o -``): its printed messages go to
    stderr, the data (written as bytes to ``.buffer``) stays alone on stdout."""

    def __init__(self, real: Any) -> None:
        self.buffer = real.buffer

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()
        self.buffer.flush()

    def writable(self) -> bool:
        return True


@contextmanager
def _stdio(args: Any) -> Iterator[None]:
    """``-`` arguments: spool stdin for verbs that open their inputs by path; keep stdout for data."""
    with ExitStack() as stack:
        names = SPOOLED_INPUTS.get(args.verb, ())
        dashes = [(n, i) for n in names for i, v in enumerate(getattr(args, n, None) or []) if v == "-"]
        if len(dashes) > 1:
            raise UsageError("only one input can be read from stdin (-)")
        if dashes:
            name, i = dashes[0]
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(prefix="netsiam-stdin-", suffix=".txt"))
            shutil.copyfileobj(sys.stdin.buffer, tmp)
            tmp.flush()
            getattr(args, name)[i] = tmp.name
        if any(getattr(args, n, None) == "-" for n in OUTPUTS.get(args.verb, ())):
            real = sys.stdout
            sys.stdout = _TextToStderr(real)
            stack.callback(setattr, sys, "stdout", real)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)   # a usage error exits 2 here (argparse)
    _choose_backend()
    quiet.install()                          # before anything can import TensorFlow
    _setup_logging(args.verb)
    try:
        from netsiam.settings import resolve_config

        cfg, choice = resolve_config(getattr(args, "config", None))
        # services and Kafka verbs say which config (brokers, security) they run on; an offline verb keeps
        # stderr to its one-line error
        log.log(logging.INFO if args.verb in (*LONG_RUNNING, "replay", "dump") else logging.DEBUG, "%s", choice.describe())
        module_name, func_name = HANDLERS[args.verb].split(":")
        handler = getattr(importlib.import_module(module_name), func_name)
        with _stdio(args):
            return int(handler(args, cfg) or 0)
    except NetsiamError as e:
        _error(args.verb, str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        _error(args.verb, str(e))   # a file named on the command line or in the config
        return EXIT_DATA
    except (OSError, MemoryError) as e:
        _error(args.verb, str(e))   # e.g. a port in use, a full disk: the host, not the input
        return EXIT_RUNTIME
    except Exception as e:  # noqa: BLE001 - one line for users; NETSIAM_DEBUG=1 shows the traceback
        if debugging():
            raise
        _error(args.verb, f"internal error: {type(e).__name__}: {e} (NETSIAM_DEBUG=1 for details)", prefix=False)
        return EXIT_RUNTIME


def _error(verb: str, message: str, prefix: bool = True) -> None:
    print(f"netsiam {verb}: {'error: ' if prefix else ''}{message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
