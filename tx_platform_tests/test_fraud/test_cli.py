"""`txp produce --fraud-ratio` records the ground truth; `txp fraud report` scores it and exits 1 below the bar."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tx_platform.config import PROJECT_ROOT, Settings
from tx_platform_tests.conftest import fetch_all

pytestmark = [pytest.mark.integration]


def _txp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [str(PROJECT_ROOT / ".venv" / "bin" / "txp"), *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_produce_records_ground_truth_and_the_report_fails_without_detection(settings: Settings, unique: str) -> None:
    topic = f"tx_{unique}"
    env = {**os.environ, "COLUMNS": "200"}
    assert _txp(env, "topics", "create", "--topic", topic).returncode == 0
    produced = _txp(
        env, "produce", "--topic", topic, "--count", "2000", "--seed", "8", "--span-hours", "2",
        "--fraud-ratio", "0.002", "--late-ratio", "0.05", "--max-lateness", "15",
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr[-3000:]
    assert "delivered 2000 of 2000" in produced.stdout
    rows = fetch_all(settings.dsn(), "SELECT scenario, count(*) FROM fraud_ground_truth WHERE topic = %s "
                     "GROUP BY scenario ORDER BY scenario", topic)  # fmt: skip
    assert rows == [("amount_spike", 1), ("card_testing", 1), ("impossible_travel", 1), ("velocity", 1)]
    # nothing detected yet (the query has not run on this topic): recall 0, the command fails
    report = _txp(env, "fraud", "report", "--topic", topic)
    assert report.returncode == 1
    figures = json.loads(report.stdout)
    assert (figures["injected"], figures["detected"], figures["alerts"], figures["recall"]) == (4, 0, 0, 0.0)
    assert not figures["passed"]
