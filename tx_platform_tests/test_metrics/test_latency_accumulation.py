"""commit_batch accumulates exact latency histograms in sink_latency, in the commit's transaction."""

import csv
import io
import math
from datetime import UTC, datetime, timedelta

import pytest

from tx_platform.config import Settings
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import PartitionRange, commit_batch, connect, ensure_schema

pytestmark = pytest.mark.integration

ROW = ["A1", "C1", "K1", "M1", "5411", "12.34", "EUR", "POS", "PURCHASE", "DE", "Köln", "50.9", "6.9"]


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _line(values: list[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _tx(topic: str, tx_id: str, offset: int, event_time: datetime, kafka_ts: datetime | None | str) -> str:
    fields: list[object] = [tx_id, *ROW, _iso(event_time), topic, 0, offset, "\\x4131", f"\\x{offset:04x}"]
    if kafka_ts != "absent":
        fields.append("" if kafka_ts is None else _iso(kafka_ts))  # type: ignore[arg-type]
    return _line(fields)


def _latency(settings: Settings, topic: str) -> dict[tuple[str, float], tuple[int, float]]:
    conn = connect(settings.dsn())
    with conn.cursor() as cur:
        cur.execute("SELECT kind, le, count, sum FROM sink_latency WHERE topic = %s", (topic,))
        rows = {(kind, le): (count, total) for kind, le, count, total in cur.fetchall()}
        cur.execute("SELECT seconds FROM sink_batches WHERE topic = %s ORDER BY id", (topic,))
        seconds = [s for (s,) in cur.fetchall()]
    conn.close()
    return rows, seconds  # type: ignore[return-value]


def test_latencies_are_bucketed_at_commit_and_accumulate(settings: Settings, spec: PipelineSpec, unique: str) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    now = datetime.now(UTC)
    ids = [f"{unique[:8]}-0000-4000-8000-{i:012d}" for i in range(5)]
    lines = [
        _tx(topic, ids[0], 0, now - timedelta(seconds=100), now - timedelta(seconds=20)),  # 300 / 30
        _tx(topic, ids[1], 1, now - timedelta(seconds=100), now - timedelta(seconds=20)),  # 300 / 30
        _tx(topic, ids[2], 2, now - timedelta(hours=2), None),  # +Inf / (no Kafka timestamp)
        _tx(topic, ids[3], 3, now + timedelta(seconds=60), now + timedelta(seconds=60)),  # future: 0 s -> 0.1
    ]
    conn = connect(settings.dsn())
    first = commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, 3)})
    # a replay inserts nothing: no latency is counted twice, only the commit itself
    replay = commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, 3)})
    # a line written without the Kafka timestamp column (a sink older than this writer) still commits
    old = commit_batch(
        conn, spec, 1, [_tx(topic, ids[4], 4, now - timedelta(seconds=100), "absent")], [], {0: PartitionRange(4, 4)}
    )
    # a duplicate transaction_id is quarantined, not inserted: no latency for it
    dup = commit_batch(
        conn, spec, 2, [_tx(topic, ids[0], 5, now - timedelta(seconds=1), now)], [], {0: PartitionRange(5, 5)}
    )
    conn.close()
    assert (first.inserted, replay.inserted, old.inserted, dup.inserted, dup.quarantined) == (4, 0, 1, 0, 1)

    rows, seconds = _latency(settings, topic)
    counts = {key: count for key, (count, _) in rows.items() if key[0] != "commit"}
    assert counts == {
        ("event_time", 300.0): 3,
        ("event_time", math.inf): 1,
        ("event_time", 0.1): 1,
        ("kafka_timestamp", 30.0): 2,
        ("kafka_timestamp", 0.1): 1,
    }
    assert sum(n for (kind, _), (n, _) in rows.items() if kind == "commit") == 4  # one per commit
    assert rows[("event_time", 0.1)][1] == 0.0  # a future event time counts 0 s, never negative
    assert 300 < rows[("event_time", 300.0)][1] < 300 + 3 * 30
    assert 7200 <= rows[("event_time", math.inf)][1] < 7200 + 30
    assert len(seconds) == 4 and all(s is not None and 0 <= s < 30 for s in seconds)
    commit_sum = sum(total for (kind, _), (_, total) in rows.items() if kind == "commit")
    assert commit_sum == pytest.approx(sum(seconds))
