"""scripts/demo end to end: four real nodes certified with `tongyuan pki` (mutual TLS), the
counties' rows reaching the province (ID numbers only as pseudonyms), a live change, and every
node stopped at the end. Runs with the test interpreter (no venv install) and
200 people per county, in about 25 s on two cores."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo"


def _stop_group(process: subprocess.Popen[str]) -> None:
    """The demo and its nodes share a process group: SIGTERM it, then SIGKILL what remains."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.timeout(90)
def test_demo_reaches_the_province(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "TONGYUAN_DEMO_PYTHON": sys.executable,
        "TONGYUAN_DEMO_DIR": str(demo_dir),
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [str(DEMO), "--people", "200", "--entities", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # so that a timeout can stop the nodes with it
    )
    try:
        output, _ = process.communicate(timeout=80)
    finally:
        if process.poll() is None:
            _stop_group(process)
    assert process.returncode == 0, output
    assert f"using {sys.executable}" in output
    held = re.search(
        r"province holds all the counties' rows: "
        r"person (\S+) = (\S+) \+ (\S+), legal_entity (\S+) = (\S+) \+ (\S+)",
        output,
    )
    assert held is not None, output
    assert held.groups() == ("400", "200", "200", "60", "30", "30")
    assert "the province shows phone 13900000000" in output
    assert "security: mutual TLS" in output  # the province's status
    assert re.search(r"the ID number is ty1:[0-9a-f]{32} and the name", output), output
    assert "never left it (rows holding it there: 0)" in output
    assert re.search(r"origin_node.*origin_dept.*people", output)
    assert "stopped 4 node(s) cleanly" in output
    assert not list(demo_dir.glob("*/run/admin.json")), "a node was left serving"
    nodes = {
        "province": "320000",
        "city": "320100",
        "county-320102": "320102",
        "county-320104": "320104",
    }
    for name, code in nodes.items():
        log = (demo_dir / f"{name}.log").read_text(encoding="utf-8")
        assert f"node {code} stopped" in log, f"{name} did not shut down cleanly:\n{log}"
