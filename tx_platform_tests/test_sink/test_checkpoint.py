from pathlib import Path

import pytest

from spark_jobs.sink._query import checkpoint_damage, drop_uncommitted_batches, set_aside_damaged_checkpoint

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


def _spark_checkpoint(root: Path) -> None:
    """A checkpoint as Spark 4.1 writes a Kafka query's (two batches, the second committed)."""
    (root / "metadata").parent.mkdir(parents=True)
    (root / "metadata").write_text('{"id":"4640498f-12f8-409b-9a57-6a650fcedc34"}')
    (root / "sources" / "0").mkdir(parents=True)
    (root / "sources" / "0" / "0").write_bytes(b'\x00v1\n{"t":{"0":0}}')
    for batch in (0, 1):
        _touch(root / "offsets" / f".{batch}.crc")
        (root / "offsets" / str(batch)).write_text(f'v1\n{{"batchWatermarkMs":0}}\n{{"t":{{"0":{batch * 28}}}}}')
        (root / "commits").mkdir(exist_ok=True)
        (root / "commits" / str(batch)).write_text('v1\n{"nextBatchWatermarkMs":0}')


@pytest.mark.parametrize("damaged", ["offsets/1", "commits/1", "metadata", "sources/0/0"])
def test_a_damaged_checkpoint_is_set_aside_and_a_sound_one_kept(tmp_path: Path, damaged: str) -> None:
    root = tmp_path / "sink-t"
    _spark_checkpoint(root)
    assert checkpoint_damage(str(root)) is None
    assert set_aside_damaged_checkpoint(str(root)) is None
    assert root.is_dir()
    path = root / damaged
    path.write_bytes(path.read_bytes()[:7] + b"\x00garbled")  # a torn write
    assert str(path) in (checkpoint_damage(f"file://{root}") or "")
    aside = set_aside_damaged_checkpoint(str(root))
    assert aside is not None and aside.name.startswith("sink-t.damaged-") and (aside / damaged).exists()
    assert not root.exists()  # the query starts afresh, from the offsets committed in Postgres
    assert checkpoint_damage(str(root)) is None
    assert checkpoint_damage("s3a://bucket/checkpoints/sink") is None
