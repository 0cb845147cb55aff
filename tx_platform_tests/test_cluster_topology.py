"""The cluster path on one machine: 3 KRaft controllers + 3 brokers, replication 3, min ISR 2."""

from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka.admin import AdminClient

from spark_jobs.sink import PipelineSink
from tx_platform.checks import loss_report
from tx_platform.config import PROJECT_ROOT, Settings, load_settings
from tx_platform.kafka_admin import end_offsets, ensure_topic
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS, PipelineSpec
from tx_platform.producer import open_producer, produce
from tx_platform.stack import LocalStack, StackLayout
from tx_platform.warehouse import connect
from tx_platform_tests.conftest import assert_eventually
from tx_platform_tests.test_stack.test_jmx import scrape_agent, values

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LAYOUT = StackLayout(
    kafka_port=26092, controller_port=26093, postgres_port=26433, registry_port=26081, brokers=3, controllers=3,
    prometheus_port=26090, alertmanager_port=26095, pushgateway_port=26091, postgres_exporter_port=26187,
    metrics_port=26188, jmx_port=26404,
)  # fmt: skip


def test_three_brokers_replicate_and_the_sink_stays_exact(spark, tmp_path) -> None:  # noqa: ANN001
    state = PROJECT_ROOT / ".txp-test-cluster"
    LocalStack(state, load_settings().jars_dir).down(purge=True)
    stack = LocalStack(state, load_settings().jars_dir, LAYOUT)
    try:
        stack.up()
        env = stack.env()
        settings = load_settings(
            kafka_bootstrap=env["TXP_KAFKA_BOOTSTRAP"],
            schema_registry_url=env["TXP_SCHEMA_REGISTRY_URL"],
            postgres_dsn=env["TXP_POSTGRES_DSN"],
            topic_replication=3,
            checkpoint_dir=tmp_path / "checkpoints",
        )
        assert len(settings.kafka_bootstrap.split(",")) == 3
        for spec in (TRANSACTIONS, CRYPTO_TRADES):
            ensure_topic(settings.kafka_bootstrap, spec.topic, 3, 3)
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})

        def fully_replicated() -> bool:
            # brokers learn about a new topic one by one; ask until the one we reach knows it
            topics = admin.list_topics(timeout=10).topics
            return all(
                (topic := topics.get(spec.topic)) is not None
                and all(len(p.replicas) == 3 and len(p.isrs) == 3 for p in topic.partitions.values())
                for spec in (TRANSACTIONS, CRYPTO_TRADES)
            )

        assert_eventually(fully_replicated, timeout=30, what="3 replicas in sync on every partition")
        for spec, count in ((TRANSACTIONS, 3_000), (CRYPTO_TRADES, 2_000)):
            _produce_and_sink_exactly(spark, settings, spec, count)

        # every node's JMX exporter agent: exactly one active controller, bounded series
        nodes = stack.kafka_nodes()
        assert sorted(n.metrics_port or 0 for n in nodes) == list(range(LAYOUT.jmx_port, LAYOUT.jmx_port + 6))
        scraped = {n.name: scrape_agent(n.metrics_port or 0) for n in nodes}
        for node in nodes:
            samples = scraped[node.name]
            assert values(samples, "jvm_memory_used_bytes", area="heap"), f"{node.name} exports no JVM metrics"
            if node.controller_port:
                assert len(values(samples, "kafka_controller_kafkacontroller_offlinepartitionscount")) == 1
            if node.broker_port:
                assert values(samples, "kafka_server_replicamanager_underreplicatedpartitions") == [0.0], node.name
        controllers = [scraped[n.name] for n in nodes if n.controller_port]
        brokers = [scraped[n.name] for n in nodes if n.broker_port]
        assert sum(sum(values(s, "kafka_controller_kafkacontroller_activecontrollercount")) for s in controllers) == 1
        produced = "kafka_server_brokertopicmetrics_messagesin_total"
        assert sum(sum(values(s, produced, topic="transactions")) for s in brokers) >= 3_000  # counted by leaders
        # Kafka's metric names turn the topic's dots into underscores
        crypto = ("crypto.trades", "crypto_trades")
        assert sum(sum(values(s, produced, topic=t)) for s in brokers for t in crypto) >= 2_000
        series = {name: len(samples) for name, samples in scraped.items()}
        print(f"JMX agents of 3 controllers + 3 brokers: {sum(series.values())} series {series}")  # noqa: T201
        assert sum(series.values()) < 3_000, "JMX series must stay bounded (no catch-all rule)"
    finally:
        installed = [row.name for row in stack.status() if row.not_installed is None]
        stopped = stack.down(purge=True)
    assert {f"kafka-{i}" for i in range(1, 7)} | {"schema-registry", "postgres"} <= set(installed)
    assert sorted(stopped) == sorted(installed)  # every service that ran (monitoring included) was stopped


def _produce_and_sink_exactly(spark, settings: Settings, spec: PipelineSpec, count: int) -> None:  # noqa: ANN001
    """``count`` records of ``spec`` with 2 % bad ones through the cluster: every record accounted for exactly."""
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, bad_ratio=0.02, seed=9)
    start = datetime.now(UTC) - timedelta(hours=2)
    report = produce(spec.generate(count, 9, start, span=timedelta(hours=1)), producer)
    assert producer.faults is not None
    assert report.delivered == count
    assert set(producer.faults.injected) == {f.kind for f in producer.faults.faults}  # every fault kind appears

    stats = PipelineSink(spark, spec, settings).run_available_now()
    decimals = list(producer.good_totals)
    conn = connect(settings.dsn())
    loss = loss_report(conn, spec)
    with conn.cursor() as cur:
        sums = ", ".join(f"coalesce(sum({d}), 0)" for d in decimals)
        cur.execute(f"SELECT {sums} FROM {spec.table} WHERE kafka_topic = %s", (spec.topic,))  # noqa: S608
        stored = dict(zip(decimals, cur.fetchone(), strict=True))
    conn.close()
    injected = producer.faults.injected_total
    assert (loss.records_read, loss.unexplained, loss.duplicate_ids) == (count, 0, 0), spec.name
    assert loss.quarantined == injected == stats.dead_lettered, spec.name
    assert loss.rows == count - injected == stats.inserted, spec.name
    assert stored == producer.good_totals and decimals, spec.name
    assert sum(end_offsets(settings.kafka_bootstrap, spec.dlq_topic).values()) == loss.quarantined
