"""Kafka metrics through the Prometheus JMX exporter agent (monitoring/jmx/kafka-kraft.yml), on a real node.

Alert rules and dashboards use these names; the test pins every one of them and their labels.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tx_platform.kafka_admin import ensure_topic
from tx_platform.stack import LocalStack
from tx_platform.stack._artifacts import Artifacts
from tx_platform.stack._kafka import JMX_RULES, KafkaNode
from tx_platform_tests.conftest import assert_eventually, listening_addresses

RECORDS = 25
#: Request types whose TotalTimeMs percentiles the dashboards show (exported whether called or not).
LATENCY_REQUESTS = ("Produce", "Fetch", "FetchConsumer", "FetchFollower", "Metadata", "OffsetCommit", "ListOffsets")


def scrape_agent(port: int) -> list[Sample]:
    """Every sample the JMX exporter agent on 127.0.0.1:``port`` exports."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def values(samples: Iterable[Sample], name: str, **labels: str) -> list[float]:
    """Values of the series named ``name`` whose labels include ``labels``."""
    return [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]


# -- the command lines (no stack needed) ---------------------------------------------------------
@pytest.mark.unit
def test_only_the_server_jvm_carries_the_agent(tmp_path: Path) -> None:
    agent = tmp_path / "jars" / "jmx-exporter" / "jmx_prometheus_javaagent-1.0.1.jar"
    agent.parent.mkdir(parents=True)
    agent.touch()
    artifacts = Artifacts(tmp_path / "jars")
    node = KafkaNode(1, tmp_path / "kafka-1", tmp_path / "kafka-1.log", 9092, 9093, metrics_port=9404)
    config = tmp_path / "server.properties"

    fmt = node.format_command("java", artifacts, config, "cluster-id")
    assert "kafka.tools.StorageTool" in fmt
    assert not [a for a in fmt if "javaagent" in a or "9404" in a], "the storage tool must not load the agent"

    server = node.server_command("java", artifacts, config)
    agents = [a for a in server if a.startswith("-javaagent:")]
    assert agents == [f"-javaagent:{agent}=127.0.0.1:9404:{JMX_RULES}"]
    assert server.index(agents[0]) < server.index("kafka.Kafka"), "a JVM option, before the main class"
    assert JMX_RULES.is_file()

    bare = KafkaNode(1, tmp_path / "kafka-1", tmp_path / "kafka-1.log", 9092, 9093)
    assert not [a for a in bare.server_command("java", artifacts, config) if "javaagent" in a]


# -- the live node ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node(test_stack: LocalStack) -> KafkaNode:
    (only,) = test_stack.kafka_nodes()
    assert only.metrics_port == test_stack.layout.jmx_port
    return only


@pytest.fixture(scope="module")
def traffic(stack_env: dict[str, str], node: KafkaNode) -> tuple[str, list[Sample]]:
    """Produce and consume a few records on a fresh topic, then scrape the node's agent."""
    bootstrap = stack_env["TXP_KAFKA_BOOTSTRAP"]
    topic = f"jmx_{uuid.uuid4().hex[:10]}"
    ensure_topic(bootstrap, topic, 3, 1)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(RECORDS):
        producer.produce(topic, key=str(i).encode(), value=b"x" * 100)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    read = 0

    def all_read() -> bool:
        nonlocal read
        message = consumer.poll(1)
        if message is not None and message.error() is None:
            read += 1
        return read == RECORDS

    try:
        assert_eventually(all_read, timeout=60, what=f"{RECORDS} records read back")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    def scraped() -> list[Sample] | None:
        samples = scrape_agent(node.metrics_port or 0)
        return samples if sum(values(samples, "kafka_server_brokertopicmetrics_bytesout_total", topic=topic)) else None

    return topic, assert_eventually(scraped, timeout=30, what="bytes out of the test topic in the agent's metrics")


@pytest.mark.integration
def test_the_agent_listens_on_loopback_only_on_the_layout_port(test_stack: LocalStack, node: KafkaNode) -> None:
    assert listening_addresses(node.metrics_port or 0) == {"0100007F"}, "the JMX agent must bind 127.0.0.1 only"
    pid = node.process.pid()
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert [a for a in argv if a.startswith("-javaagent:")] == [
        f"-javaagent:{Artifacts(test_stack.jars_dir).jmx_agent()}=127.0.0.1:{node.metrics_port}:{JMX_RULES}"
    ]


@pytest.mark.integration
def test_every_required_series_is_exported(traffic: tuple[str, list[Sample]]) -> None:
    topic, samples = traffic
    gauges = (
        "kafka_server_replicamanager_underreplicatedpartitions",
        "kafka_server_replicamanager_underminisrpartitioncount",
        "kafka_controller_kafkacontroller_offlinepartitionscount",
    )
    for name in gauges:
        assert values(samples, name) == [0.0], name
    assert values(samples, "kafka_controller_kafkacontroller_activecontrollercount") == [1.0]
    assert values(samples, "kafka_controller_controllerstats_uncleanleaderelections_total") == [0.0]
    for name in ("kafka_server_replicamanager_isrshrinks_total", "kafka_server_replicamanager_isrexpands_total"):
        assert len(values(samples, name)) == 1, name

    # requests: counters per request type (and API version), latency percentiles per request type
    for request in ("Produce", "Fetch", "FetchConsumer", "Metadata", "OffsetCommit"):
        assert sum(values(samples, "kafka_network_requestmetrics_requests_total", request=request)) > 0, request
    for request in LATENCY_REQUESTS:
        for quantile in ("0.5", "0.99"):
            found = values(samples, "kafka_network_requestmetrics_totaltimems", request=request, quantile=quantile)
            assert len(found) == 1, (request, quantile)
    assert max(values(samples, "kafka_network_requestmetrics_totaltimems", request="Produce", quantile="0.99")) > 0
    requested = {s.labels["request"] for s in samples if s.name.startswith("kafka_network_requestmetrics_")}
    assert len(requested) <= 15, f"request types must stay bounded: {sorted(requested)}"

    # topics: per topic and the all-topics aggregate (no topic label)
    def per_topic(metric: str) -> float:
        (value,) = values(samples, f"kafka_server_brokertopicmetrics_{metric}_total", topic=topic)
        return value

    assert per_topic("messagesin") == RECORDS
    assert per_topic("bytesin") > RECORDS * 100
    assert per_topic("bytesout") > RECORDS * 100
    for metric in ("bytesin", "bytesout", "messagesin"):
        name = f"kafka_server_brokertopicmetrics_{metric}_total"
        (total,) = [s.value for s in samples if s.name == name and "topic" not in s.labels]
        assert total >= per_topic(metric), name

    sizes = {
        s.labels["partition"]: s.value for s in samples if s.name == "kafka_log_log_size" and s.labels["topic"] == topic
    }
    assert sorted(sizes) == ["0", "1", "2"] and sum(sizes.values()) > RECORDS * 100

    # JVM basics come from the agent itself
    assert values(samples, "jvm_memory_used_bytes", area="heap")[0] > 0


@pytest.mark.integration
def test_no_catch_all_rule_leaks_unlisted_kafka_series(traffic: tuple[str, list[Sample]]) -> None:
    _, samples = traffic
    kafka_names = {s.name for s in samples if s.name.startswith("kafka_")}
    assert all(n.islower() for n in kafka_names)
    families = {n.rsplit("_", 1)[0] if n.endswith("_total") else n for n in kafka_names}
    prefixes = (
        "kafka_server_replicamanager_",
        "kafka_controller_kafkacontroller_",
        "kafka_controller_controllerstats_",
        "kafka_network_requestmetrics_",
        "kafka_server_brokertopicmetrics_",
        "kafka_log_log_size",
    )
    assert all(f.startswith(prefixes) for f in families), sorted(families)
    print(f"JMX agent of the single node: {len(samples)} series")  # noqa: T201 - recorded in the test log
