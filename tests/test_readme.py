"""README's tour runs as pasted: its bash block, with only the two ports swapped for free ones."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

from netsiam.broker import free_port

README = REPO / "README.md"


def tour() -> str:
    text = README.read_text()
    section = text[text.index("## Tour"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_has_no_link_outside_the_repository() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert not target.startswith(("../", "/", "http")), target
        assert (REPO / target.split("#")[0]).exists(), target
    assert len(text.splitlines()) <= 200


def test_every_local_link_in_docs_resolves_inside_the_repository() -> None:
    """Relative to the page that holds it, as a reader's browser resolves it."""
    pages = sorted((REPO / "docs").glob("*.md"))
    assert pages
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(REPO) and path.exists(), f"{page.name}: {target}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_tour_runs_as_pasted(tmp_path: Path) -> None:
    script = tour().replace("9092", str(free_port())).replace("9108", str(free_port()))
    for name in ("tests", "deploy", ".venv"):        # the repository's files, outputs in a scratch directory
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((tmp_path / "report.json").read_text())
    assert {"expert_rule", "raw_nearest_prototype", "encoder"} <= set(report["baselines"])
    assert all(e["detected_label"] == e["label"] for e in report["episodes"])
    assert "netsiam_fault_events_total" in proc.stdout
    raised = list(csv.DictReader((tmp_path / "raised.csv").open()))
    assert {r["label"] for r in raised} == {"blocked", "capacity_limit"} and len(raised) >= 4
    novel = json.loads((tmp_path / "novel.json").read_text())
    assert "degraded" in novel["classes"]
    assert any(e["detected_label"] == "degraded" for e in novel["episodes"] if e["label"] == "degraded")
    assert (tmp_path / "training.gif").stat().st_size > 0
