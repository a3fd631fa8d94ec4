"""``make demo`` (``python -m netsiam.demo``) runs to the end and shows what it claims, also when an
earlier run left its outputs behind (a second run once served the copy the first had taught)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

NOVEL = REPO / "deploy" / "testbed" / "corpus" / "novel_r70_h8"


def netsiam(*args: str, cwd: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "netsiam", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_to_the_end_over_an_earlier_runs_taught_model(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # what a first run leaves: its copy of the model, taught the fault the demo shows as never seen
    novel = tmp_path / "novel.jsonl"
    netsiam("import", "sipp", f"{NOVEL}_stat.csv.gz", "--source", "sbc-n2", "-o", str(novel), cwd=tmp_path)
    netsiam("model", "copy", str(out / "model"), cwd=tmp_path)
    netsiam("prototypes", "add", "--model", str(out / "model"), "--name", "degraded", "--data", str(novel),
            "--labels", f"{NOVEL}_labels.csv", "--max-examples", "10", cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")} | {"NETSIAM_DEMO_OUT": str(out)}
    p = subprocess.run([sys.executable, "-m", "netsiam.demo"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # every labelled episode of the real recording raised, and the taught fault named after the feedback
    hit = re.search(r"(\d+)/(\d+) episodes of sipp_b.jsonl raised", p.stdout)
    assert hit is not None and hit.group(1) == hit.group(2) != "0", p.stdout[-3000:]
    # the never-seen recording's table: a degraded episode raised `degraded` (after the feedback), one `unknown`
    raised_as = re.findall(r"^\| sbc-n2 \| degraded \| \d+ \| \d+ \| ([^|]*) \|", p.stdout, re.M)
    first = [col.split(", ")[0] for col in raised_as]
    assert "degraded" in first and "unknown" in first, p.stdout[-3000:]
    assert (out / "report.json").stat().st_size > 0 and list((out / "plots").glob("*.png"))
