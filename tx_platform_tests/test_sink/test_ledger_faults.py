"""The sink against the faults its ledger guards: a checkpoint ahead of Postgres, a recreated topic,
two sinks on one topic, and retention deleting what the sink never read. None may skip a record silently.
"""

from __future__ import annotations

import shutil

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from spark_jobs.sink import PipelineSink
from tx_platform.checks import loss_report
from tx_platform.config import Settings
from tx_platform.errors import DataLossError, OffsetGapError, SinkAlreadyRunningError, TopicRecreatedError
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import connect, forget_topic
from tx_platform_tests.conftest import assert_eventually, produce_records
from tx_platform_tests.test_faults._sink import assert_exact, audit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rows(settings: Settings, spec: PipelineSpec) -> int:
    conn = connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM transactions WHERE kafka_topic = %s", (spec.topic,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _forget(settings: Settings, spec: PipelineSpec) -> None:
    conn = connect(settings.dsn())
    try:
        forget_topic(conn, spec)
    finally:
        conn.close()


def _sink(spark, settings: Settings, spec: PipelineSpec) -> PipelineSink:  # noqa: ANN001
    return PipelineSink(spark, spec, settings)


def test_a_checkpoint_ahead_of_postgres_stops_the_sink_instead_of_skipping(spark, settings, spec, create_topic) -> None:  # noqa: ANN001
    create_topic(spec.topic, partitions=1)
    produce_records(spec, settings, 100, seed=11)
    assert _sink(spark, settings, spec).run_available_now().inserted == 100
    _forget(settings, spec)  # Postgres restored to before the sink ran; the checkpoint still says offset 100
    produce_records(spec, settings, 50, seed=12)
    with pytest.raises(OffsetGapError, match=rf"\[OFFSET_GAP\] {spec.topic}\[0\]: the batch starts at offset 100 "
                       "but the ledger in Postgres ends at 0"):  # fmt: skip
        _sink(spark, settings, spec).run_available_now()
    assert _rows(settings, spec) == 0
    shutil.rmtree(spec.checkpoint(settings.checkpoint_root))  # what the error says to do
    assert _sink(spark, settings, spec).run_available_now().inserted == 150
    assert _rows(settings, spec) == 150
    assert assert_exact(settings, spec, "checkpoint ahead of Postgres, then deleted").records == 150


def test_a_recreated_topic_is_refused_not_read_as_a_replay(spark, settings, spec, create_topic) -> None:  # noqa: ANN001
    create_topic(spec.topic, partitions=1)
    produce_records(spec, settings, 100, seed=21)
    assert _sink(spark, settings, spec).run_available_now().inserted == 100
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.delete_topics([spec.topic])[spec.topic].result(timeout=30)
    assert_eventually(lambda: spec.topic not in admin.list_topics(timeout=10).topics, what="topic deletion")
    create_topic(spec.topic, partitions=1)
    produce_records(spec, settings, 150, seed=22)  # past the old offset 100: a replay check alone would skip 0..99
    with pytest.raises(TopicRecreatedError, match=rf"\[TOPIC_RECREATED\] {spec.topic}: Kafka's topic id is"):
        _sink(spark, settings, spec).run_available_now()
    assert _rows(settings, spec) == 100
    _forget(settings, spec)
    shutil.rmtree(spec.checkpoint(settings.checkpoint_root))
    assert _sink(spark, settings, spec).run_available_now().inserted == 150
    # the new topic's records, each once; nothing of the old topic is left to pass as one of them
    assert assert_exact(settings, spec, "topic recreated, old rows forgotten").records == 150


def test_a_second_sink_on_the_same_topic_fails_while_the_first_runs(spark, settings, spec, create_topic) -> None:  # noqa: ANN001
    create_topic(spec.topic, partitions=1)
    produce_records(spec, settings, 40, seed=31)
    first = _sink(spark, settings, spec)
    query = first.start(available_now=False, processing_time="1 second")
    try:
        assert_eventually(lambda: _rows(settings, spec) == 40, timeout=60, what="the first sink to commit")
        other = settings.model_copy(update={"checkpoint_dir": settings.checkpoint_root.parent / "other"})
        with pytest.raises(SinkAlreadyRunningError, match=rf"\[SINK_ALREADY_RUNNING\] .* {spec.topic} "):
            _sink(spark, other, spec).run_available_now()
    finally:
        query.stop()
        first.close()
    produce_records(spec, settings, 10, seed=32)
    assert _sink(spark, settings, spec).run_available_now().inserted == 10  # the lease is free again
    assert assert_exact(settings, spec, "a second sink refused").records == 50


def test_records_deleted_before_the_sink_read_them_stop_it_or_are_recorded(spark, settings, spec, create_topic) -> None:  # noqa: ANN001
    create_topic(spec.topic, partitions=1)
    produce_records(spec, settings, 100, seed=41)
    assert _sink(spark, settings, spec).run_available_now().inserted == 100
    produce_records(spec, settings, 100, seed=42)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    [future] = admin.delete_records([TopicPartition(spec.topic, 0, 150)]).values()  # what retention does
    future.result(timeout=30)
    with pytest.raises(DataLossError, match=rf"\[DATA_LOSS\] .*{spec.topic}\[0\] offsets 100..149 \(50 records\)"):
        _sink(spark, settings, spec).run_available_now()
    assert _rows(settings, spec) == 100
    recording = settings.model_copy(update={"sink_on_data_loss": "record"})
    assert _sink(spark, recording, spec).run_available_now().inserted == 50
    conn = connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT partition, first_offset, next_offset FROM sink_gaps WHERE topic = %s", (spec.topic,))
            assert cur.fetchall() == [(0, 100, 150)]
        report = loss_report(conn, spec)
    finally:
        conn.close()
    assert (report.records_read, report.rows, report.lost_in_gaps, report.unexplained) == (150, 150, 50, 0)
    # the independent count reads the topic as it is now (offsets 150..199): the deleted records are gone
    # from it, rows 0..99 lie below its log start, and 150..199 are stored once
    result = audit(settings, spec, "retention gap recorded")
    assert (result.records, result.lost, result.duplicated, result.unexplained) == (50, 0, 0, 0), result.as_dict()
