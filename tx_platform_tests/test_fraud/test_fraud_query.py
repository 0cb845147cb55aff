"""The fraud query against the real stack: recall and precision, exactly-once alerts, the watermark's boundary."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from spark_jobs.fraud import FraudQuery, alerts_topic
from spark_jobs.fraud._query import H_ALERT_ID
from spark_jobs.sink import PipelineSink
from tx_platform.config import Settings
from tx_platform.pipelines import PipelineSpec
from tx_platform.pipelines.transactions._fraud import (
    FRAUD_HEADER,
    SCENARIOS,
    fraud_report,
    load_rules,
    plan_incidents,
    record_headers,
    write_ground_truth,
)
from tx_platform.pipelines.transactions._generator import build_pools, generate
from tx_platform.producer import open_producer, produce
from tx_platform.warehouse import connect
from tx_platform_tests.conftest import fetch_all, spark_jars

pytestmark = pytest.mark.usefixtures("stack_env")
ROOT = Path(__file__).resolve().parents[2]


def _produce_scenarios(spec: PipelineSpec, settings: Settings, count: int, seed: int, ratio: float) -> list[Any]:
    """Produce a seeded stream with incidents to ``spec.topic`` (headers on), record its ground truth; the plan.

    The seed is mixed with the topic (as ``produce_records`` does): transaction ids, and so alert ids, of one test
    differ from those of another test, or of the same test on a reused stack.
    """
    seed = seed * 1_000_003 + zlib.crc32(spec.topic.encode())
    start = datetime.now(UTC) - timedelta(hours=3)
    span = timedelta(hours=2)
    pools = build_pools(seed)
    plan = plan_incidents(count, seed, start, span, ratio, pools)
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, seed=seed)
    producer.record_headers = record_headers(plan)
    report = produce(generate(count, seed, start, span=span, pools=pools, fraud_ratio=ratio), producer)
    assert report.delivered == count
    conn = connect(settings.dsn())
    try:
        assert write_ground_truth(conn, spec.topic, seed, plan) == len(plan)
    finally:
        conn.close()
    return plan


def _alert_records(settings: Settings, topic: str) -> list[str]:
    """The alert id of every record of the alerts topic, in order."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{uuid.uuid4()}", "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        found: list[str] = []
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            seen = 0
            while seen < high - low:
                message = consumer.poll(10)
                assert message is not None, f"{topic}[{partition}] unreadable"
                if message.error():
                    continue
                seen += 1
                headers: dict[str, Any] = dict(message.headers() or [])  # type: ignore[arg-type]
                found.append(headers[H_ALERT_ID].decode())
            consumer.unassign()
        return found
    finally:
        consumer.close()


def test_every_incident_detected_once_in_table_and_topic(
    spark, spec: PipelineSpec, settings: Settings, create_topic
) -> None:  # noqa: ANN001, E501
    """Recall 100% / precision 100% over a seeded stream with every scenario; each alert once in the table and topic."""
    create_topic(spec.topic)
    plan = _produce_scenarios(spec, settings, 8_000, 21, 0.001)
    assert collections.Counter(i.scenario for i in plan) == dict.fromkeys(SCENARIOS, 2)
    stats = FraudQuery(spark, spec, settings).run_available_now()
    assert stats.inserted == stats.published == 8
    conn = connect(settings.dsn())
    try:
        report = fraud_report(conn, topic=spec.topic)
    finally:
        conn.close()
    assert report["injected"] == report["detected"] == report["alerts"] == 8
    assert report["recall"] == 1.0 and report["precision"] == 1.0 and report["passed"]
    rows = fetch_all(settings.dsn(), "SELECT alert_id::text, rule, transaction_ids, published_offset FROM fraud_alerts "
                     "WHERE topic = %s", spec.topic)  # fmt: skip
    detected = {
        i.incident_id
        for i in plan
        for _a, rule, tx_ids, _o in rows
        if rule == i.scenario and set(tx_ids) & set(i.transaction_ids)
    }
    assert detected == {i.incident_id for i in plan}
    assert all(offset is not None for *_, offset in rows)
    assert sorted(_alert_records(settings, alerts_topic(spec))) == sorted(a for a, *_ in rows)
    # the query's own ledger covers every partition it read, up to the topic's end
    ledger = fetch_all(settings.dsn(), "SELECT partition, next_offset FROM fraud_offsets WHERE topic = %s", spec.topic)
    assert sum(n for _, n in ledger) == 8_000
    # a second run finds nothing new: same alert ids, nothing inserted or sent again
    again = FraudQuery(spark, spec, settings).run_available_now()
    assert (again.inserted, again.published) == (0, 0)
    # the ground truth travels as a header on each fraudulent record too
    assert _fraud_headers(settings, spec.topic, 8_000) == {i.header: len(i.transaction_ids) for i in plan}


def _fraud_headers(settings: Settings, topic: str, count: int) -> dict[bytes, int]:
    """How many records of ``topic`` carry each value of the fraud header."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"t-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: collections.Counter[bytes] = collections.Counter()
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while seen < count and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            seen += 1
            headers: dict[str, Any] = dict(message.headers() or [])  # type: ignore[arg-type]
            header = headers.get(FRAUD_HEADER)
            if header is not None:
                values[header] += 1
    finally:
        consumer.close()
    assert seen == count
    return dict(values)


@pytest.mark.heavy
def test_alerts_exactly_once_when_killed_mid_stream(
    spec: PipelineSpec,
    settings: Settings,
    tmp_path: Path,
    create_topic,  # noqa: ANN001
) -> None:
    """SIGKILL the running query mid-stream, start it again: each alert id once in the table and once in the topic."""
    create_topic(spec.topic)
    plan = _produce_scenarios(spec, settings, 12_000, 23, 0.002)
    env = {**os.environ, "TXP_CHECKPOINT_DIR": str(settings.checkpoint_root), "TXP_MAX_OFFSETS_PER_TRIGGER": "600",
           "TXP_SPARK_JARS": ",".join(str(j) for j in spark_jars()), "PYTHONPATH": str(ROOT)}  # fmt: skip
    command = [sys.executable, "-m", "spark_jobs.fraud.main", "--topic", spec.topic, "--trigger", "1 second"]
    log = (tmp_path / "fraud.log").open("w")
    process = subprocess.Popen(  # noqa: S603 - our own job
        command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            (done,) = fetch_all(settings.dsn(), "SELECT count(*) FROM fraud_alerts WHERE topic = %s", spec.topic)[0]
            if done >= 3:
                break
            assert process.poll() is None, (tmp_path / "fraud.log").read_text()[-3000:]
            time.sleep(0.5)
        assert 3 <= done < len(plan), f"{done} alerts when killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        log.close()
    restarted = subprocess.run(  # noqa: S603 - our own job
        [*command, "--available-now"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    errors = [line for line in restarted.stderr.splitlines() if "Error" in line or "Exception" in line]
    assert restarted.returncode == 0, "\n".join(errors[:20])[:4000]
    rows = fetch_all(settings.dsn(), "SELECT alert_id::text, published_offset FROM fraud_alerts WHERE topic = %s",
                     spec.topic)  # fmt: skip
    assert len(rows) == len(plan) == 24
    assert all(offset is not None for _, offset in rows)
    records = _alert_records(settings, alerts_topic(spec))
    assert sorted(records) == sorted(a for a, _ in rows)  # once each: no duplicate, none missing
    conn = connect(settings.dsn())
    try:
        assert fraud_report(conn, topic=spec.topic)["passed"]
    finally:
        conn.close()


def _burst(template: dict[str, Any], account: str, last: datetime, n: int) -> list[dict[str, Any]]:
    """``n`` POS transactions of one account and card at one shop, 20 s apart, the last at ``last``."""
    return [
        {**template, "transaction_id": str(uuid.uuid4()), "account_id": account, "card_id": f"K{account}",
         "channel": "POS", "transaction_type": "PURCHASE", "event_time": last - timedelta(seconds=20 * (n - 1 - i))}
        for i in range(n)
    ]  # fmt: skip


def test_the_watermark_boundary_record_by_record(spark, spec: PipelineSpec, settings: Settings, create_topic) -> None:  # noqa: ANN001, E501
    """A velocity burst whose last event arrives just inside the allowed lateness alerts; just outside, it does not.

    Both last events are stored by the sink all the same, the one beyond the allowed lateness flagged late.
    """
    create_topic(spec.topic)
    rules = load_rules()
    n = rules.velocity_count + 1  # one more than the threshold: the last event decides
    lateness = timedelta(minutes=10)
    template = next(generate(1, 5, datetime.now(UTC), span=timedelta(minutes=1)))
    now = datetime.now(UTC).replace(microsecond=0)
    started = time.monotonic()
    # the watermark after the first batch: the newest event time (the advancer's, a minute ahead) minus the lateness
    watermark = now + timedelta(minutes=1) - lateness
    inside = _burst(template, "A_INSIDE", watermark + timedelta(seconds=90), n)
    outside = _burst(template, "A_OUTSIDE", watermark - timedelta(seconds=90), n)
    advancer = {
        **template,
        "transaction_id": str(uuid.uuid4()),
        "account_id": "A_CLOCK",
        "event_time": now + timedelta(minutes=1),
    }
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url)
    assert produce([*inside[:-1], *outside[:-1], advancer], producer).delivered == 2 * n - 1
    query = FraudQuery(spark, spec, settings)
    assert query.run_available_now().alerts == 0
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url)
    # reaching Kafka within 150 s of `now`, the inside event is less than the allowed lateness old, the outside one more
    assert time.monotonic() - started < 150, "the first run took too long for the arrival-time side of the boundary"
    assert produce([inside[-1], outside[-1]], producer).delivered == 2
    query = FraudQuery(spark, spec, settings)
    assert query.run_available_now().alerts == 1
    rows = fetch_all(settings.dsn(), "SELECT account_id, rule, transaction_ids FROM fraud_alerts WHERE topic = %s",
                     spec.topic)  # fmt: skip
    assert rows == [("A_INSIDE", "velocity", sorted(r["transaction_id"] for r in inside))]
    # the sink keeps both; the one past the allowed lateness is flagged late
    PipelineSink(spark, spec, settings).run_available_now()
    stored = dict(
        fetch_all(settings.dsn(), "SELECT transaction_id::text, late FROM transactions "
                  "WHERE transaction_id::text = ANY(%s)", [inside[-1]["transaction_id"], outside[-1]["transaction_id"]])
    )  # fmt: skip
    assert stored == {inside[-1]["transaction_id"]: False, outside[-1]["transaction_id"]: True}
