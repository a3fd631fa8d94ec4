"""The distribution as an operator installs it (docs/deploy.md): a wheel in a clean virtual environment.

The wheel is built from the working tree's files, installed without dependencies into a fresh venv,
and the big dependencies are lent to it read-only: a directory of links to the test environment's
packages, put on its path by a .pth file, minus ``netsiam`` itself (so the installed copy is the one
that runs) and, for the GPU-host case, minus TensorFlow. ``pip check`` then proves the wheel's
declared dependencies are all there, and the installed CLI evaluates a SIPp recording with the model
shipped inside the wheel, under TensorFlow and, with TensorFlow absent, under PyTorch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA, REPO

from netsiam.quiet import NOISE

NOT_A_DEPENDENCY = re.compile(r"^(netsiam|__editable__|pip)\b|\.pth$", re.I)  # the wheel brings netsiam
TENSORFLOW = re.compile(r"^(tensorflow|tensorboard|tf_keras|tensorflow_io)", re.I)


def _version_at_least(dist: str, wanted: tuple[int, ...]) -> bool:
    try:
        got = tuple(int(x) for x in re.findall(r"\d+", importlib.metadata.version(dist))[:len(wanted)])
    except importlib.metadata.PackageNotFoundError:
        return False
    return got >= wanted


def _tree_copy(dst: Path) -> Path:
    """The repository's files as git sees them (tracked and new, not ignored): what a release holds."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = _tree_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out),
           str(src)]
    # pyproject's `license = "Apache-2.0"` needs setuptools >= 77: use this environment's when it has one,
    # else let pip fetch the build requirements in an isolated environment
    if _version_at_least("setuptools", (77,)) and _version_at_least("wheel", (0, 40)):
        cmd.append("--no-build-isolation")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "--no-build-isolation" not in cmd and re.search(r"(?i)connection|network|resolve",
                                                                              r.stderr):
        pytest.skip(f"cannot build the wheel: no setuptools >= 77 here and no network for pip ({r.stderr[-300:]})")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (whl,) = out.glob("netsiam-*.whl")
    return whl


def _lend(site: Path, farm: Path, without_tensorflow: bool) -> None:
    """Links to every package of this environment that the wheel depends on, directly or not."""
    farm.mkdir()
    for entry in site.iterdir():
        if NOT_A_DEPENDENCY.search(entry.name) or (without_tensorflow and TENSORFLOW.search(entry.name)):
            continue
        (farm / entry.name).symlink_to(entry)


def _venv(tmp: Path, wheel: Path, without_tensorflow: bool) -> Path:
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    py = env / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    farm = tmp / "lent"
    keras = importlib.util.find_spec("keras")  # where the big dependencies live (found, not imported)
    assert keras is not None and keras.origin is not None
    _lend(Path(keras.origin).resolve().parents[1], farm, without_tensorflow)
    (site / "lent-dependencies.pth").write_text(f"{farm}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "--disable-pip-version-check"]
    r = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the wheel's declared dependencies are not all installed:\n{r.stdout}{r.stderr}"
    return env


def _run(env: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a clean environment: nothing of the repository or the test environment on the path
    clean = {"PATH": f"{env / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([str(env / "bin" / "python"), *args], cwd=cwd, env=clean, capture_output=True, text=True,
                          timeout=600)


CHECK = """
import json, sys
from pathlib import Path
import netsiam
from netsiam.cli import main
home = Path(netsiam.__file__).resolve()
assert home.is_relative_to(Path(sys.prefix).resolve()), f"netsiam imported from {home}, not the venv"
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "tensorflow": "tensorflow" in sys.modules, "home": str(home)}), file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("without_tensorflow", [False, True], ids=["tensorflow", "torch-without-tensorflow"])
def test_wheel_installs_and_serves_the_shipped_model(wheel: Path, tmp_path: Path, without_tensorflow: bool) -> None:
    if without_tensorflow:
        try:
            import torch  # noqa: F401
        except ImportError:
            pytest.skip("torch is not installed (make install adds CPU torch)")
    env = _venv(tmp_path, wheel, without_tensorflow)
    work = tmp_path / "work"
    work.mkdir()
    r = _run(env, work, "-m", "netsiam", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"netsiam {importlib.metadata.version('netsiam')}", r
    # the LICENSE and the schemas travel in the wheel
    r = _run(env, work, "-c", "import importlib.metadata as m, netsiam.schemas as s; from pathlib import Path; "
             "print(any(str(f).endswith('LICENSE') for f in m.files('netsiam'))); "
             "print(len(list(Path(s.__file__).parent.glob('*.schema.json'))))")
    assert r.stdout.split() == ["True", str(len(list((REPO / "schemas").glob("*.schema.json"))))], r.stdout + r.stderr
    shutil.copy(DATA / "sipp_b_stat.csv", work)
    shutil.copy(DATA / "sipp_b_labels.csv", work)
    r = _run(env, work, "-m", "netsiam", "import", "sipp", "sipp_b_stat.csv", "--source", "sbc-b", "-o", "b.jsonl")
    assert r.returncode == 0, r.stderr
    r = _run(env, work, "-c", CHECK, "evaluate", "--data", "b.jsonl", "--labels", "sipp_b_labels.csv", "--json", "-")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)  # --json -: the report alone on stdout, the summary on stderr
    assert report["episodes"] and all(ep["detected"] for ep in report["episodes"]), report["episodes"]
    status = json.loads(r.stderr.strip().splitlines()[-1])
    assert status["tensorflow"] is not without_tensorflow
    assert not [ln for ln in r.stderr.splitlines() if NOISE.search(ln)], r.stderr  # TensorFlow kept quiet


def test_license_is_the_apache_2_text() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
