"""The rendered broker configuration of the local stack."""

from pathlib import Path

import pytest

from tx_platform.stack._kafka import KafkaNode

pytestmark = pytest.mark.unit


def _properties(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_retention_never_deletes_an_unread_backlog_by_size(tmp_path: Path) -> None:
    """A size limit per partition (1 GiB before) filled in minutes at full producer speed."""
    node = KafkaNode(1, tmp_path / "kafka-1", tmp_path / "kafka-1.log", 9092, 9093)
    props = _properties(node.render_config("1@127.0.0.1:9093", replication=1))
    assert props["log.retention.bytes"] == "-1"
    assert props["log.retention.hours"] == "168"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
