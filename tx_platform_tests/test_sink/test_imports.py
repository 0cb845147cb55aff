"""Spark code runs on a cluster with the package and its data only: it never imports the launcher,
the producer, the CLI or the demo (and through them Faker, Click, the JVM artifact resolver...)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tx_platform.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

FORBIDDEN = ("tx_platform.stack", "tx_platform.producer", "tx_platform.cli", "tx_platform.demo")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (``from a import b`` counts as a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f"{f}.") for f in FORBIDDEN)


def test_spark_jobs_import_nothing_of_the_launcher_producer_cli_or_demo() -> None:
    files = sorted((PROJECT_ROOT / "spark_jobs").rglob("*.py"))
    assert len(files) >= 10  # the sink's modules at least: the walk found the code
    offenders = {str(f.relative_to(PROJECT_ROOT)): sorted(filter(_forbidden, imported_modules(f))) for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_walk_finds_imports_at_any_depth(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom tx_platform import producer\n\ndef f():\n    from tx_platform.stack import LocalStack\n"
        "    import tx_platform.cli._main\n"
    )
    found = imported_modules(source)
    assert sorted(filter(_forbidden, found)) == ["tx_platform.cli._main", "tx_platform.producer",
                                                 "tx_platform.stack", "tx_platform.stack.LocalStack"]  # fmt: skip
    assert "os" in found


def test_nothing_forbidden_is_loaded_indirectly_either() -> None:
    """What the sink's entry point loads, transitively (a spec names its generator by reference)."""
    import subprocess
    import sys

    probe = (
        "import sys, spark_jobs.sink.main, spark_jobs.session; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('tx_platform', 'faker', 'dagster', "
        "'click'))))"
    )
    loaded = subprocess.run(  # noqa: S603 - the test's own interpreter
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout.split()
    assert "tx_platform.pipelines" in loaded and "tx_platform.warehouse" in loaded
    assert [m for m in loaded if _forbidden(m) or m.split(".")[0] in ("faker", "dagster", "click")] == []
