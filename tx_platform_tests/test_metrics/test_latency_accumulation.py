"""commit_batch accumulates exact latency histograms in sink_latency, in the commit's transaction."""

import csv
import io
import math
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from tx_platform.config import Settings
from tx_platform.metrics import bucket_for
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import PartitionRange, commit_batch, connect, ensure_schema
from tx_platform.warehouse._sink_writer import _accumulate_latency, latency_histograms

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


#: Seconds before the commit of each instant, at and around the buckets' bounds (negative: in the future).
EDGES = [-60, 0, 0.1, 0.100001, 0.25, 0.999999, 1, 1.000001, 2, 4.5, 5, 10, 3600, 3600.000001, 2 * 86400 + 0.5]


@pytest.mark.unit
def test_histograms_from_instants_bucket_as_bucket_for_says() -> None:
    at = datetime(2026, 11, 26, 9, 0, 0, 123456, tzinfo=UTC)
    instants = pa.array([at - timedelta(seconds=s) for s in EDGES] + [None], pa.timestamp("us", tz="UTC"))
    rows = latency_histograms(at, {"kafka_timestamp": instants})
    expected: dict[float, list[float]] = {}
    for s in EDGES:
        expected.setdefault(bucket_for(max(0.0, s)), []).append(max(0.0, s))
    assert [(kind, le, count) for kind, le, count, _ in rows] == [
        ("kafka_timestamp", le, len(v)) for le, v in sorted(expected.items())
    ]
    assert [total for *_, total in rows] == pytest.approx([sum(v) for _, v in sorted(expected.items())])


def test_histograms_from_instants_match_postgres_reading_the_rows(settings: Settings, spec: PipelineSpec) -> None:
    """The direct load's histograms (from the write task's instants) and the staged path's (Postgres reading
    the rows) agree row for row: counts exactly, sums to float rounding."""
    ensure_schema(settings.dsn(), [spec])
    at = datetime.now(UTC)
    event = [at - timedelta(seconds=s) for s in EDGES]
    kafka = [at - timedelta(seconds=s / 3) for s in EDGES[:-1]] + [None]
    by_topic = {}
    conn = connect(settings.dsn())
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE instants (event_time timestamptz, kafka_timestamp timestamptz) ON COMMIT DROP")
        cur.executemany("INSERT INTO instants VALUES (%s, %s)", list(zip(event, kafka, strict=True)))
        times = {
            "event_time": pa.array(event, pa.timestamp("us", tz="UTC")),
            "kafka_timestamp": pa.array(kafka, pa.timestamp("us", tz="UTC")),
        }
        for suffix, given in (("rows", None), ("instants", times)):
            topic = f"{spec.topic}_{suffix}"
            _accumulate_latency(cur, spec.with_topic(topic), at, 0.5, "instants", given)
            cur.execute(
                "SELECT kind, le, count, sum FROM sink_latency WHERE topic = %s AND kind <> 'commit' ORDER BY 1, 2",
                (topic,),
            )
            by_topic[suffix] = cur.fetchall()
        conn.rollback()
    conn.close()
    read, computed = by_topic["rows"], by_topic["instants"]
    assert [r[:3] for r in computed] == [r[:3] for r in read]
    assert sum(count for _, _, count, _ in read) == 2 * len(EDGES) - 1  # one Kafka timestamp is missing
    assert [r[3] for r in computed] == pytest.approx([r[3] for r in read], rel=1e-12)
