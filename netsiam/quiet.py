"""Keep TensorFlow's start-up chatter out of every command's output.

TensorFlow prints a few lines to the process's stderr (file descriptor 2, from C++) when it is imported
and when it first looks for GPUs: absl's "All log messages before absl::InitializeLog()" notice,
"Could not find cuda drivers", the CPU-feature and oneDNN notes, and "failed call to cuInit" on a
host without a GPU. ``TF_CPP_MIN_LOG_LEVEL`` silences only some of them (absl prints its pre-init
lines whatever it says), so :func:`install` also puts a hook on the import of ``tensorflow``: the
import and the GPU lookup run with descriptor 2 sent to a temporary file, and afterwards every
captured line that is not known noise is written back to stderr (all of them with NETSIAM_DEBUG=1).
Nothing is imported by :func:`install` itself: verbs that never load a model never load TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType

from netsiam.errors import debugging

__all__ = ["NOISE", "filter_noise", "install", "quiet_fd2"]

# Lines TensorFlow prints on a normal start (CPU host, GPU host without drivers, oneDNN builds).
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|cudart_stub\.cc|cuda_platform\.cc.*cuInit|failed call to cuInit"
    r"|cpu_feature_guard\.cc|To enable the following instructions:|rebuild TensorFlow with the appropriate"
    r"|oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT|cuda_executor\.cc.*NUMA node"
)


def filter_noise(lines: Sequence[str]) -> list[str]:
    """The lines worth showing: not TensorFlow start-up noise, not blank."""
    return [ln for ln in lines if ln.strip() and not NOISE.search(ln)]


@contextlib.contextmanager
def quiet_fd2() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block, then write back what is not noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr at all: nothing to keep quiet
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode(errors="replace").splitlines()
            keep = lines if debugging() else filter_noise(lines)
            if keep:
                sys.stderr.write("\n".join(keep) + "\n")
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Wraps TensorFlow's own loader: its import and first GPU lookup run under :func:`quiet_fd2`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with quiet_fd2():
            self.inner.exec_module(module)
            # cuInit complains at the first device lookup, not at import: do it here, once
            with contextlib.suppress(Exception):
                module.config.list_physical_devices("GPU")


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the standard path finder does, with its loader wrapped. Stays on
    ``sys.meta_path``: a probe (``find_spec`` without an import, as PyTorch makes) must not use it up;
    once TensorFlow is imported, Python no longer asks."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _QuietLoader):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiet TensorFlow for this process (call before anything imports it; a no-op afterwards)."""
    # Python-side and C++ INFO/WARNING logs; an operator's own setting wins
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
