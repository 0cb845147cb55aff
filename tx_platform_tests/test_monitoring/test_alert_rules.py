"""Alert rules: valid for Prometheus, and each unit-tested by promtool both firing and quiet."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tx_platform.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

PROMETHEUS_DIR = PROJECT_ROOT / "monitoring" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make setup` installs Debian's prometheus package (apt-get install prometheus)"
    return found


def _run(*args: str | Path) -> str:
    result = subprocess.run([_promtool(), *map(str, args)], capture_output=True, text=True, check=False)  # noqa: S603
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _rules() -> list[dict]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def _alert_names() -> set[str]:
    return {rule["alert"] for rule in _rules() if "alert" in rule}


def test_rule_files_are_valid() -> None:
    assert RULE_FILES, "no rule files"
    out = _run("check", "rules", *RULE_FILES)
    assert out.count("SUCCESS") == len(RULE_FILES)
    assert sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", out)) == len(_rules())


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in _run("test", "rules", *TEST_FILES)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert _alert_names() - firing == set(), "alerts never shown firing"
    assert _alert_names() - quiet == set(), "alerts never shown staying quiet"
