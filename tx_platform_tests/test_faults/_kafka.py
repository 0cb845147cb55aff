"""Helpers of the Kafka-side fault tests: a private 3+3 stack, a load producer, the sink, the topic read back.

Everything here talks to real processes: the stack's Kafka JVMs (found by their pid files), the
producer's delivery reports (librdkafka's own callbacks), the sink subprocess and the topic itself.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from tx_platform.checks import Audit, audit_pipeline
from tx_platform.config import Settings, load_settings
from tx_platform.contract import AvroRecordSerializer, Record, register_contract, registry_client
from tx_platform.contract._avro import split_wire_format
from tx_platform.errors import DeliveryError
from tx_platform.kafka_admin import end_offsets, watermarks
from tx_platform.pipelines import PipelineSpec
from tx_platform.producer import RecordProducer, produce
from tx_platform.stack import LocalStack, StackLayout
from tx_platform.stack._kafka import KafkaNode
from tx_platform.warehouse import committed_offsets, connect
from tx_platform_tests.conftest import assert_eventually, start_continuous_sink
from tx_platform_tests.test_stack.test_jmx import scrape_agent, values

#: This suite's port block is 24000-24199; the Kafka nodes sit 10 ports apart inside it (see FaultStack).
LAYOUT = StackLayout(
    kafka_port=24000, controller_port=24001, postgres_port=24030, registry_port=24031, brokers=3, controllers=3,
    prometheus_port=24032, alertmanager_port=24033, pushgateway_port=24034, postgres_exporter_port=24035,
    metrics_port=24036, jmx_port=24040, spark_master_port=24051, spark_master_ui_port=24052,
    spark_worker_ui_port=24053,
)  # fmt: skip
SPARK_UI_PORT = 24050  # the continuous sink's driver UI (local mode)
STATE_DIR = Path("/tmp/txp-B-faults")  # noqa: S108 - the suite's private state dir
REPLICAS = 3


class FaultStack(LocalStack):
    """A LocalStack whose Kafka nodes are 10 ports apart instead of 100.

    The launcher spaces node ``i`` at ``port + 100 * i``: three brokers need 201 ports, more than
    this suite's block of 200. Every port the launcher uses comes from ``kafka_nodes()``.
    """

    def kafka_nodes(self) -> list[KafkaNode]:
        def squeeze(port: int | None, base: int) -> int | None:
            return None if port is None else base + (port - base) // 100 * 10

        kafka, controller = self.layout.kafka_port, self.layout.controller_port
        return [
            replace(
                n, broker_port=squeeze(n.broker_port, kafka), controller_port=squeeze(n.controller_port, controller)
            )
            for n in super().kafka_nodes()
        ]


@dataclass
class Cluster:
    """The running 3+3 stack, with what the faults need: nodes by id, leaders, ISR, the active controller."""

    stack: FaultStack
    settings: Settings
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.stack.kafka_nodes() if n.node_id == node_id)

    def brokers(self) -> list[KafkaNode]:
        return [n for n in self.stack.kafka_nodes() if n.broker_port]

    def controllers(self) -> list[KafkaNode]:
        return [n for n in self.stack.kafka_nodes() if n.controller_port]

    def pid(self, node_id: int) -> int:
        pid = self.node(node_id).process.pid()
        assert pid is not None, f"kafka-{node_id} is not running"
        return pid

    def kill(self, *node_ids: int) -> list[int]:
        """SIGKILL the JVMs of ``node_ids``, all signalled before waiting for any (nodes die together, not one
        after the other's exit); return once all are gone (and reaped: the stack started them from here)."""
        pids = [self.pid(node_id) for node_id in node_ids]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for node_id, pid in zip(node_ids, pids, strict=True):
            assert_eventually(lambda n=node_id: self.node(n).process.pid() is None, 20, f"kafka-{node_id} gone")
            _reap(pid)
        return pids

    def restart(self) -> None:
        """Start every node that is down (the stack's own ``up``: it waits until all brokers answer)."""
        self.stack.up(timeout=300)

    def partitions(self, topic: str, via: str | None = None) -> dict[int, tuple[int, tuple[int, ...]]]:
        """``{partition: (leader, isr)}`` as a broker reports it now (leader -1: none)."""
        admin = AdminClient({"bootstrap.servers": via or self.bootstrap, "socket.timeout.ms": 5_000})
        info = admin.list_topics(topic=topic, timeout=10).topics[topic]
        return {p: (m.leader, tuple(sorted(m.isrs))) for p, m in info.partitions.items()}

    def leader(self, topic: str, partition: int) -> int:
        return self.partitions(topic)[partition][0]

    def wait_in_sync(self, topics: list[str], timeout: float = 120.0) -> None:
        """Wait until every broker reports every partition of ``topics`` led, with all 3 replicas in sync."""

        def in_sync() -> bool:
            try:
                for broker in self.brokers():
                    via = f"127.0.0.1:{broker.broker_port}"
                    for topic in topics:
                        if any(
                            leader < 0 or len(isr) < REPLICAS for leader, isr in self.partitions(topic, via).values()
                        ):
                            return False
            except (KafkaException, KeyError):
                return False
            return True

        assert_eventually(in_sync, timeout, f"{REPLICAS} replicas in sync on {topics}")

    def active_controller(self) -> int:
        """Node id of the active KRaft controller, from the controllers' own JMX agents (exactly one says 1)."""
        active = []
        for node in self.controllers():
            if node.process.pid() is None:
                continue
            try:
                samples = scrape_agent(node.metrics_port or 0)
            except (OSError, urllib.error.URLError):
                continue
            if sum(values(samples, "kafka_controller_kafkacontroller_activecontrollercount")) == 1:
                active.append(node.node_id)
        assert len(active) <= 1, f"more than one active controller: {active}"
        return active[0] if active else -1


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (the stack was started by another process)


def start_cluster(checkpoints: Path) -> Cluster:
    """Purge what a previous run left in the state dir, start the 3+3 stack, return it with its settings."""
    jars = load_settings().jars_dir
    FaultStack(STATE_DIR, jars).down(purge=True)
    stack = FaultStack(STATE_DIR, jars, LAYOUT)
    try:
        stack.up(timeout=360)
    except Exception:
        for log in sorted(stack.logs_dir.glob("*.log")):
            print(f"==== {log}\n{log.read_text(errors='replace')[-3000:]}")  # noqa: T201 - shown on failure
        stack.down(purge=True)
        raise
    env = {**stack.env(), "TXP_SPARK_UI_PORT": str(SPARK_UI_PORT)}
    settings = load_settings(
        kafka_bootstrap=env["TXP_KAFKA_BOOTSTRAP"],
        schema_registry_url=env["TXP_SCHEMA_REGISTRY_URL"],
        postgres_dsn=env["TXP_POSTGRES_DSN"],
        pushgateway_url=env["TXP_PUSHGATEWAY_URL"],
        topic_replication=REPLICAS,
        state_dir=STATE_DIR,
        checkpoint_dir=checkpoints,
        spark_ui_port=SPARK_UI_PORT,
    )
    assert len(settings.kafka_bootstrap.split(",")) == REPLICAS
    return Cluster(stack, settings, env)


# -- the producer under load ----------------------------------------------------------------------
@dataclass
class LoadProducer:
    """``spec``'s records at ``rate``/s from a background thread until :meth:`stop`; every delivery report kept.

    ``delivered`` holds the coordinates librdkafka reported acknowledged, in arrival order; ``sent_ids``
    the natural keys handed to the client. librdkafka's statistics give the retries it needed.
    """

    spec: PipelineSpec
    settings: Settings
    seed: int
    rate: float
    bad_ratio: float = 0.0
    extra_config: dict[str, Any] = field(default_factory=dict)
    delivered: list[tuple[int, int]] = field(default_factory=list)
    sent_ids: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0  # librdkafka's produce request retries (sum over brokers, from its statistics)
    max_latency: float = 0.0  # seconds from produce() to the delivery report
    failure: BaseException | None = None

    def __post_init__(self) -> None:
        url = self.settings.schema_registry_url
        client = registry_client(url)
        register_contract(client, url, self.spec.contract.schema_str, self.spec.subject)
        serializer = AvroRecordSerializer(client, self.spec.topic, self.spec.contract.schema_str)
        config = {"statistics.interval.ms": 1_000, "stats_cb": self._stats, **self.extra_config}
        self.producer = RecordProducer(
            self.settings.kafka_bootstrap, self.spec, serializer, config, bad_ratio=self.bad_ratio, seed=self.seed
        )
        self.producer.report.observer = self._observe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{self.seed}", daemon=True)

    @property
    def report(self) -> Any:  # noqa: ANN401 - the DeliveryReport
        return self.producer.report

    def _observe(self, err: Any, msg: Any) -> None:  # noqa: ANN401 - KafkaError | None, Message
        if err is None:
            self.delivered.append((msg.partition(), msg.offset()))
        else:
            self.errors[err.name()] += 1
        latency = msg.latency()
        if latency is not None and latency > self.max_latency:
            self.max_latency = latency

    def _stats(self, text: str) -> None:
        stats = json.loads(text)
        self.retries = max(self.retries, sum(b.get("txretries", 0) for b in stats.get("brokers", {}).values()))

    def _records(self) -> Iterator[Record]:
        start = datetime.now(UTC) - timedelta(hours=2)
        for record in self.spec.generate(10_000_000, self.seed, start, span=timedelta(hours=1)):
            if self._stop.is_set():
                return
            self.sent_ids.append(str(record[self.spec.natural_key]))
            yield record

    def _run(self) -> None:
        try:
            produce(self._records(), self.producer, rate=self.rate)
        except DeliveryError as exc:
            self.failure = exc

    def start(self) -> LoadProducer:
        self._thread.start()
        return self

    def __enter__(self) -> LoadProducer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        # a failed test must not leave a producer thread retrying against a stack being torn down
        if self._thread.is_alive():
            self.stop()

    def stop(self, timeout: float = 200.0) -> None:
        """Stop sending, wait for the final flush (every record acknowledged or failed)."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the producer did not finish its flush"

    def wait_delivered(self, more: int, timeout: float = 60.0) -> None:
        """Wait until ``more`` records past the current count are acknowledged."""
        target = len(self.delivered) + more
        assert_eventually(lambda: len(self.delivered) >= target, timeout, f"{target} records delivered")


# -- the sink ---------------------------------------------------------------------------------------
@dataclass
class Sink:
    """The continuous sink (`spark_jobs/sink/main.py`, 1-second trigger) on the 3+3 stack, as a subprocess."""

    cluster: Cluster
    spec: PipelineSpec
    log: Path
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 400.0) -> None:
        process = start_continuous_sink(self.spec, self.cluster.settings, self.log, **self.cluster.env)
        self.process = process
        assert_eventually(lambda: "sink running" in self.text() or process.poll() is not None, timeout, "sink running")
        assert process.poll() is None, f"the sink exited:\n{self.tail()}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 4_000) -> str:
        """The end of the log without Java stack frames."""
        lines = [line for line in self.text().splitlines() if not line.lstrip().startswith(("at ", "^"))]
        return "\n".join(lines)[-chars:]

    def assert_alive(self) -> None:
        assert self.process is not None and self.process.poll() is None, f"the sink died:\n{self.tail()}"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)

    def committed_rows(self) -> int:
        """Records the sink has committed (table + quarantine), from its offsets in Postgres."""
        conn = connect(self.cluster.settings.dsn())
        try:
            return sum(committed_offsets(conn, self.spec.topic).values())
        finally:
            conn.close()

    def wait_caught_up(self, timeout: float = 400.0) -> dict[int, int]:
        """Wait until the sink committed every partition to its end and published every quarantined record."""
        ends = end_offsets(self.cluster.bootstrap, self.spec.topic)

        def caught_up() -> bool:
            self.assert_alive()
            conn = connect(self.cluster.settings.dsn())
            try:
                committed = committed_offsets(conn, self.spec.topic)
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM quarantine WHERE kafka_topic = %s AND dlq_offset IS NULL",
                        (self.spec.topic,),
                    )
                    unpublished = int(cur.fetchone()[0])
            finally:
                conn.close()
            return unpublished == 0 and all(committed.get(p, 0) >= end for p, end in ends.items())

        assert_eventually(caught_up, timeout, f"the sink at the end of {self.spec.topic} {ends} (lag 0)")
        return ends


def audit(cluster: Cluster, spec: PipelineSpec, what: str) -> Audit:
    """The independent audit of ``spec``'s topic, printed; lost = duplicated = unexplained = 0 asserted."""
    conn = connect(cluster.settings.dsn())
    try:
        report = audit_pipeline(conn, cluster.bootstrap, spec)
    finally:
        conn.close()
    print(f"audit after {what}: {json.dumps(report.as_dict())}")  # noqa: T201 - the figures of the run
    assert (report.lost, report.duplicated, report.unexplained) == (0, 0, 0), report.as_dict()
    assert report.records > 0
    return report


# -- the topic read back ----------------------------------------------------------------------------
def natural_keys(bootstrap: str, spec: PipelineSpec, since: dict[int, int]) -> dict[tuple[int, int], str]:
    """``{(partition, offset): natural key}`` of every record of ``spec.topic`` from ``since`` to the end now.

    Decoded here from the Confluent wire format with the contract's schema, independently of the sink.
    """
    schema = fastavro.parse_schema(json.loads(spec.contract.schema_str))
    marks = watermarks(bootstrap, spec.topic)
    pending = {p: high for p, (_low, high) in marks.items() if high > since.get(p, 0)}
    found: dict[tuple[int, int], str] = {}
    if not pending:
        return found
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "txp-fault-test", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(spec.topic, p, max(since.get(p, 0), marks[p][0])) for p in pending])
        deadline = time.monotonic() + 120
        while pending:
            assert time.monotonic() < deadline, f"could not read {spec.topic} to {pending}"
            for message in consumer.consume(10_000, 1.0):
                if message.error() is not None:
                    continue
                partition, offset = int(message.partition() or 0), int(message.offset() or 0)
                end = pending.get(partition)
                if end is None or offset >= end:
                    continue
                _schema_id, body = split_wire_format(message.value() or b"")
                record: Any = fastavro.schemaless_reader(io.BytesIO(body), schema, schema)
                found[(partition, offset)] = str(record[spec.natural_key])
                if offset + 1 >= end:
                    del pending[partition]
    finally:
        consumer.close()
    return found


def assert_delivered_exactly_once(
    delivered: list[tuple[int, int]], in_topic: dict[tuple[int, int], str], attempted: set[str]
) -> Counter[str]:
    """Every coordinate reported delivered holds a record whose key is in the topic once; nothing else doubled.

    Returns the count of each attempted key in the topic (records not reported delivered: 0 or 1).
    """
    counts = Counter(key for key in in_topic.values() if key in attempted)
    assert len(set(delivered)) == len(delivered), "a coordinate was reported delivered twice"
    missing = [c for c in delivered if c not in in_topic]
    assert not missing, f"{len(missing)} records reported delivered are not in the topic, e.g. {missing[:5]}"
    doubled = {key: n for key, n in counts.items() if n > 1}
    assert not doubled, f"{len(doubled)} records are in the topic more than once, e.g. {list(doubled.items())[:5]}"
    strangers = [key for key in in_topic.values() if key not in attempted]
    assert not strangers, f"{len(strangers)} records in the topic that the producer never sent, e.g. {strangers[:5]}"
    return counts
