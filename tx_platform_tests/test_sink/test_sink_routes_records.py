"""Good and bad records through the real Kafka and Spark into Postgres: each lands in one place."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer

from spark_jobs.sink import SinkConfig, TransactionSink
from tx_platform.config import Settings
from tx_platform.contract import json_serializer
from tx_platform.producer import generate
from tx_platform.warehouse import connect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _record(seed: int, **changes: object) -> bytes:
    record = next(generate(1, seed=seed, start=datetime(2026, 2, 1, tzinfo=UTC)))
    raw = json.loads(json_serializer(record))
    for key, value in changes.items():
        if value is _DROP:
            raw.pop(key)
        else:
            raw[key] = value
    return json.dumps(raw).encode()


_DROP = object()
FUTURE = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

#: (label, value bytes or None, expected error code or None for a stored row)
CASES = [
    ("valid-1", _record(9001), None),
    ("valid-2", _record(9002), None),
    ("tombstone", None, "NULL_VALUE"),
    ("not-json", b"\x00\x01garbage", "MALFORMED_RECORD"),
    ("empty", b"", "MALFORMED_RECORD"),
    ("amount-not-a-number", _record(9003, amount="lots"), "MALFORMED_RECORD"),
    ("missing-id", _record(9004, transaction_id=_DROP), "MISSING_FIELD"),
    ("bad-uuid", _record(9005, transaction_id="not-a-uuid"), "INVALID_UUID"),
    ("bad-channel", _record(9006, channel="FAX"), "INVALID_ENUM"),
    ("negative-amount", _record(9007, amount=-5.0), "NON_POSITIVE_AMOUNT"),
    ("unknown-currency", _record(9008, currency="XYZ"), "UNKNOWN_CURRENCY"),
    ("unknown-country", _record(9009, country="QQ"), "UNKNOWN_COUNTRY"),
    ("bad-mcc", _record(9010, merchant_category="54a1"), "INVALID_MERCHANT_CATEGORY"),
    ("bad-latitude", _record(9011, latitude=123.0), "INVALID_COORDINATES"),
    ("future", _record(9012, event_time=FUTURE), "EVENT_TIME_IN_FUTURE"),
]


def test_every_record_lands_once_with_its_reason(spark, settings: Settings, create_topic) -> None:  # noqa: ANN001
    create_topic(settings.topic, partitions=1)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    for label, value, _ in CASES:
        producer.produce(settings.topic, key=label.encode(), value=value)
    assert producer.flush(30) == 0

    stats = TransactionSink(spark, SinkConfig.from_settings(settings)).run_available_now()

    conn = connect(settings.dsn())
    with conn.cursor() as cur:
        cur.execute("SELECT kafka_offset FROM transactions WHERE kafka_topic = %s ORDER BY 1", (settings.topic,))
        stored = [r[0] for r in cur.fetchall()]
        cur.execute(
            "SELECT kafka_offset, error_code, reason, raw_key, raw_value FROM quarantine "
            "WHERE kafka_topic = %s ORDER BY 1",
            (settings.topic,),
        )
        quarantined = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()

    assert (stats.records, stats.inserted, stats.quarantined) == (len(CASES), 2, len(CASES) - 2)
    assert stored == [0, 1]
    for offset, (label, value, code) in enumerate(CASES):
        if code is None:
            continue
        assert quarantined[offset][0] == code, label
        assert quarantined[offset][1], f"{label}: a reason is recorded"
        assert bytes(quarantined[offset][2]) == label.encode(), f"{label}: raw key kept"
        raw_value = quarantined[offset][3]
        assert (None if raw_value is None else bytes(raw_value)) == value, f"{label}: raw value kept byte for byte"

    again = TransactionSink(spark, SinkConfig.from_settings(settings)).run_available_now()
    assert again.records == 0 and again.inserted == 0
