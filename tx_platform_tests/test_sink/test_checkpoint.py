from pathlib import Path

import pytest

from spark_jobs.sink._query import drop_uncommitted_batches

pytestmark = pytest.mark.unit


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("v1")


def test_planned_but_uncommitted_batches_are_dropped(tmp_path: Path) -> None:
    for batch in (0, 1, 2, 3):
        _touch(tmp_path / "offsets" / str(batch))
        _touch(tmp_path / "offsets" / f".{batch}.crc")
    for batch in (0, 1):
        _touch(tmp_path / "commits" / str(batch))
    assert drop_uncommitted_batches(str(tmp_path)) == [2, 3]
    assert sorted(p.name for p in (tmp_path / "offsets").iterdir()) == [".0.crc", ".1.crc", "0", "1"]
    assert drop_uncommitted_batches(str(tmp_path)) == []


def test_first_batch_never_committed_and_remote_or_missing_checkpoints(tmp_path: Path) -> None:
    _touch(tmp_path / "offsets" / "0")
    assert drop_uncommitted_batches(f"file://{tmp_path}") == [0]
    assert drop_uncommitted_batches(str(tmp_path / "nothing-here")) == []
    assert drop_uncommitted_batches("s3a://bucket/checkpoints/sink") == []
