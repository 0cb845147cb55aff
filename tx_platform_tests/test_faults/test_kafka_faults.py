"""The fault matrix's Kafka rows on a 3+3 topology (RF 3, min ISR 2), under load, each ended by the audit.

One private stack (3 KRaft controllers + 3 brokers, ports 24000-24199) and one continuous sink
serve the whole module: each test produces its own records into the same topic while the sink
runs, injects its fault, waits until the sink has caught up (lag 0, every quarantined record
published to the DLQ) and audits the whole topic. Each test also checks that the fault really
happened (a leader moved, an ISR shrank, the producer had to retry or stalled) and that the sink
process lived through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tx_platform.kafka_admin import end_offsets, ensure_topic
from tx_platform.pipelines import TRANSACTIONS, PipelineSpec
from tx_platform.warehouse import connect
from tx_platform_tests.conftest import assert_eventually
from tx_platform_tests.test_faults._kafka import (
    REPLICAS,
    STATE_DIR,
    Cluster,
    LoadProducer,
    Sink,
    assert_delivered_exactly_once,
    audit,
    natural_keys,
    start_cluster,
)

pytestmark = [pytest.mark.faults, pytest.mark.heavy]

RATE = 1_500  # records/s: a moderate load the 2 cores keep up with beside 6 Kafka JVMs and Spark
TXP = Path(os.environ.get("VIRTUAL_ENV") or Path(__file__).resolve().parents[2] / ".venv") / "bin" / "txp"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The private 3+3 stack of this module, purged at the end."""
    cluster = start_cluster(tmp_path_factory.mktemp("kafka-faults") / "checkpoints")
    try:
        yield cluster
    finally:
        cluster.stack.down(purge=True)


@pytest.fixture(scope="module")
def sink(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sink]:
    """The continuous sink of the module's topic (transactions on ``faults_<unique>``, RF 3)."""
    spec = TRANSACTIONS.with_topic(f"faults_{uuid.uuid4().hex[:8]}")
    ensure_topic(cluster.bootstrap, spec.topic, 3, REPLICAS)
    # kept after the run (pytest keeps only its last few temporary directories), beside the state dir
    logs = Path(f"{STATE_DIR}-logs")
    logs.mkdir(exist_ok=True)
    running = Sink(cluster, spec, logs / f"sink-{spec.topic}.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()
        print(f"---- sink log {running.log} (last lines)\n{running.tail(2_000)}")  # noqa: T201 - shown with -rA


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _topics(spec: PipelineSpec) -> list[str]:
    return [spec.topic, spec.dlq_topic]


@contextmanager
def _load(cluster: Cluster, sink: Sink, name: str) -> Iterator[LoadProducer]:
    """A producer at RATE on the sink's topic (2 % bad records: the DLQ path runs through the fault too)."""
    with LoadProducer(sink.spec, cluster.settings, _seed(name), RATE, bad_ratio=0.02) as load:
        load.wait_delivered(3 * RATE)  # under way, and the sink is reading it
        yield load


def _finish(cluster: Cluster, sink: Sink, load: LoadProducer, what: str, pid: int) -> None:
    """Stop the producer (all acknowledged), wait for lag 0, check the sink survived, audit."""
    load.stop()
    assert load.failure is None, load.failure
    assert (load.report.failed, load.report.delivered) == (0, load.report.sent), load.report
    sink.wait_caught_up()
    assert sink.pid == pid
    sink.assert_alive()
    print(  # noqa: T201 - the figures of the run
        f"{what}: producer sent {load.report.sent}, delivered {load.report.delivered}, "
        f"retries {load.retries}, errors {dict(load.errors)}, max delivery latency {load.max_latency:.2f} s"
    )
    audit(cluster, sink.spec, what)


def test_partition_leader_killed_under_load(cluster: Cluster, sink: Sink) -> None:
    spec = sink.spec
    cluster.wait_in_sync(_topics(spec))
    with _load(cluster, sink, "leader-killed") as load:
        leader = cluster.leader(spec.topic, 0)
        committed = sink.committed_rows()
        cluster.kill(leader)
        moved = assert_eventually(
            lambda: (new := cluster.leader(spec.topic, 0)) not in (leader, -1) and new,
            30,
            f"a new leader of partition 0 (kafka-{leader} killed)",
        )
        # RF 3 with min ISR 2: the two replicas left take acks=all writes while kafka-{leader} is down
        load.wait_delivered(5 * RATE)
        assert_eventually(
            lambda: all(leader not in isr for _l, isr in cluster.partitions(spec.topic).values()),
            30,
            f"kafka-{leader} out of every ISR",
        )
        assert_eventually(lambda: sink.committed_rows() > committed + 5 * RATE, 300, "the sink committing meanwhile")
        cluster.restart()
        cluster.wait_in_sync(_topics(spec))
        load.wait_delivered(3 * RATE)
        _finish(cluster, sink, load, f"kill -9 of kafka-{leader} (leader of partition 0; now kafka-{moved})", sink.pid)
        # the producer lost its leader's connection: its requests there failed and were retried
        assert load.retries > 0 or load.max_latency > 1.0, (load.retries, load.max_latency)


def test_rolling_restart_of_every_broker(cluster: Cluster, sink: Sink) -> None:
    spec = sink.spec
    cluster.wait_in_sync(_topics(spec))
    with _load(cluster, sink, "rolling-restart") as load:
        restarted = []
        for broker in cluster.brokers():
            before = cluster.pid(broker.node_id)
            committed = sink.committed_rows()
            assert broker.process.stop(timeout=60)  # SIGTERM: a controlled shutdown hands its leaderships over
            assert_eventually(
                lambda b=broker.node_id: all(
                    lead not in (b, -1) for lead, _isr in cluster.partitions(spec.topic).values()
                ),
                30,
                f"every partition led by another broker than kafka-{broker.node_id}",
            )
            load.wait_delivered(2 * RATE)
            cluster.restart()
            cluster.wait_in_sync(_topics(spec))
            assert cluster.pid(broker.node_id) != before
            assert_eventually(lambda c=committed: sink.committed_rows() > c, 300, "the sink committing meanwhile")
            restarted.append(broker.node_id)
        assert restarted == [4, 5, 6]
        _finish(cluster, sink, load, f"a rolling restart of brokers {restarted}", sink.pid)


def test_broker_paused_for_30_seconds(cluster: Cluster, sink: Sink) -> None:
    spec = sink.spec
    cluster.wait_in_sync(_topics(spec))
    with _load(cluster, sink, "broker-paused") as load:
        leader = cluster.leader(spec.topic, 0)
        pid = cluster.pid(leader)
        paused = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            # the controller fences the silent broker (no heartbeats): leadership moves, the ISR shrinks
            def fenced() -> bool:
                return all(
                    lead != leader and leader not in isr for lead, isr in cluster.partitions(spec.topic).values()
                )

            assert_eventually(fenced, 25, f"kafka-{leader} out of every ISR while stopped")
            shrunk = cluster.partitions(spec.topic)
            load.wait_delivered(2 * RATE, timeout=max(1.0, 30 - (time.monotonic() - paused)))
            time.sleep(max(0.0, 30 - (time.monotonic() - paused)))
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"kafka-{leader} stopped {time.monotonic() - paused:.1f} s; partitions meanwhile {shrunk}")  # noqa: T201
        cluster.wait_in_sync(_topics(spec))
        assert cluster.pid(leader) == pid  # the same process came back, not a restart
        load.wait_delivered(3 * RATE)
        _finish(cluster, sink, load, f"SIGSTOP of kafka-{leader} for 30 s", sink.pid)


def test_active_controller_killed(cluster: Cluster, sink: Sink) -> None:
    spec = sink.spec
    cluster.wait_in_sync(_topics(spec))
    with _load(cluster, sink, "controller-killed") as load:
        active = cluster.active_controller()
        assert active in {n.node_id for n in cluster.controllers()}
        cluster.kill(active)
        elected = assert_eventually(
            lambda: (new := cluster.active_controller()) not in (active, -1) and new, 60, "a new active controller"
        )
        # the quorum of the two left serves metadata changes: a new topic gets leaders
        assert ensure_topic(cluster.bootstrap, f"{spec.topic}.probe", 3, REPLICAS, timeout=60)
        load.wait_delivered(5 * RATE)
        cluster.restart()
        assert_eventually(lambda: cluster.active_controller() in {active, elected}, 60, "one active controller")
        assert cluster.pid(active) is not None  # the killed controller runs again, beside the active one
        cluster.wait_in_sync(_topics(spec))
        load.wait_delivered(3 * RATE)
        _finish(
            cluster,
            sink,
            load,
            f"kill -9 of the active controller kafka-{active} (kafka-{elected} took over)",
            sink.pid,
        )


def test_two_of_three_brokers_down(cluster: Cluster, sink: Sink, tmp_path: Path) -> None:
    """acks=all with min ISR 2 and one broker left: no record is acknowledged until the others return.

    Two producers run through the outage: `txp produce` (its 120 s delivery timeout outlasts the
    outage: it blocks, then delivers) and one with an 8 s timeout, which must fail loudly.
    """
    spec = sink.spec
    cluster.wait_in_sync(_topics(spec))
    since = end_offsets(cluster.bootstrap, spec.topic)
    count, seed = 90_000, _seed("two-down-cli")
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0, tzinfo=None)
    log = tmp_path / "delivered.log"
    command = _produce_command(spec, count, seed, start, log)
    out = tmp_path / "produce.out"
    with out.open("w") as output:
        cli = subprocess.Popen(command, env={**os.environ, **cluster.env}, stdout=output, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        short = LoadProducer(
            spec, cluster.settings, _seed("two-down-short"), 500, extra_config={"message.timeout.ms": 8_000}
        )
        short.start()

        def acked() -> int:
            return len(log.read_text().splitlines()) if log.exists() else 0

        assert_eventually(lambda: acked() > 2 * RATE and len(short.delivered) > 500, 60, "both producers delivering")
        down = [b.node_id for b in cluster.brokers()][:2]
        # both signalled before waiting for either: two brokers down together, as the row says
        cluster.kill(*down)
        time.sleep(3)  # acks already on their way when the brokers died
        stalled = (acked(), len(short.delivered))
        time.sleep(25)
        during = (acked(), len(short.delivered))
        partitions = cluster.partitions(spec.topic)
        # nothing was reported delivered with a single replica in sync
        assert during == stalled, (stalled, during, partitions)
        cluster.restart()
        cluster.wait_in_sync(_topics(spec))
        short.stop()
        code = cli.wait(300)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        cluster.restart()  # a failure above must not leave the next tests two brokers short (no-op when all run)
    output_text = out.read_text(errors="replace")
    print(f"txp produce exited {code}: {output_text[-600:]}")  # noqa: T201
    print(  # noqa: T201
        f"8 s-timeout producer: sent {short.report.sent}, delivered {short.report.delivered}, "
        f"failed {short.report.failed}, errors {dict(short.errors)}; failure: {short.failure}"
    )
    # the short-timeout producer failed loudly for what the outage held up, and only for that
    assert short.failure is not None and "[NOT_DELIVERED]" in str(short.failure)
    assert short.report.failed > 0 and short.report.delivered + short.report.failed == short.report.sent
    assert short.report.delivered == len(short.delivered)
    # txp produce blocked through the outage, then had every record acknowledged
    assert code == 0, output_text
    assert f"delivered {count} of {count}, failed 0" in output_text
    cli_delivered = [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]
    assert len(cli_delivered) == count

    sink.wait_caught_up()
    sink.assert_alive()
    in_topic = natural_keys(cluster.bootstrap, spec, since)
    cli_ids = {
        str(r[spec.natural_key]) for r in spec.generate(count, seed, start.replace(tzinfo=UTC), span=timedelta(hours=1))
    }
    short_ids = set(short.sent_ids)
    attempted = cli_ids | short_ids
    strangers = [key for key in in_topic.values() if key not in attempted]
    assert not strangers, f"{len(strangers)} records in the topic that neither producer sent, e.g. {strangers[:5]}"
    # txp produce (its 120 s timeout outlasted the outage): every record reported delivered, each exactly once
    assert_delivered_exactly_once(cli_delivered, {c: k for c, k in in_topic.items() if k in cli_ids}, cli_ids)  # type: ignore[arg-type]
    # the 8 s producer: what it reported delivered is in the topic...
    assert all(c in in_topic and in_topic[c] in short_ids for c in short.delivered)
    # ...but its message timeouts made librdkafka bump the idempotent producer's epoch, and records in flight
    # then (persisted, not yet acknowledged) were sent again under new sequence numbers: written twice, most
    # of them reported delivered (librdkafka issue #4953). The warehouse holds each once: the second copy is
    # quarantined on its natural key, and nothing else is.
    copies = Counter(key for key in in_topic.values() if key in short_ids)
    extra = sum(n - 1 for n in copies.values())
    twice = {key for key, n in copies.items() if n > 1}
    reported = {in_topic[c] for c in short.delivered}
    conn = connect(cluster.settings.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT error_code, count(*) FROM quarantine WHERE kafka_topic = %s "
                "AND kafka_offset >= (%s::jsonb ->> kafka_partition::text)::bigint GROUP BY error_code",
                (spec.topic, json.dumps({str(p): o for p, o in since.items()})),
            )
            quarantined = dict(cur.fetchall())
    finally:
        conn.close()
    assert quarantined == ({spec.duplicate_code: extra} if extra else {}), (quarantined, extra)
    written_once = len(copies) - short.report.delivered
    print(  # noqa: T201
        f"two of three brokers down {stalled}: txp produce delivered {len(cli_delivered)} of {count}, each once; "
        f"the 8 s producer sent {short.report.sent}: {short.report.delivered} reported delivered, "
        f"{short.report.failed} failed ({short.report.failed - max(written_once, 0)} absent from the topic); "
        f"{len(twice)} of its records written twice ({len(twice & reported)} reported delivered), "
        f"{extra} second copies quarantined as {spec.duplicate_code}"
    )
    audit(cluster, spec, f"brokers {down} down (min ISR 2)")


def _produce_command(spec: PipelineSpec, count: int, seed: int, start: datetime, log: Path) -> list[str]:
    """`txp produce` at the tests' rate from ``start`` (naive UTC), logging every acknowledged record to ``log``."""
    return [
        str(TXP), "produce", "--pipeline", spec.name, "--topic", spec.topic, "--count", str(count),
        "--rate", str(RATE), "--seed", str(seed), "--start", start.isoformat(), "--span-hours", "1",
        "--delivered-log", str(log),
    ]  # fmt: skip


def test_producer_killed_mid_run(cluster: Cluster, sink: Sink, tmp_path: Path) -> None:
    """kill -9 of `txp produce`: what it had reported delivered (its --delivered-log) is in the topic once."""
    spec = sink.spec
    cluster.wait_in_sync(_topics(spec))
    since = end_offsets(cluster.bootstrap, spec.topic)
    count, seed = 200_000, _seed("producer-killed")
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0, tzinfo=None)
    log = tmp_path / "delivered.log"
    command = _produce_command(spec, count, seed, start, log)
    with (tmp_path / "produce.out").open("w") as output:
        cli = subprocess.Popen(command, env={**os.environ, **cluster.env}, stdout=output, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        assert_eventually(lambda: log.exists() and len(log.read_text().splitlines()) > 8 * RATE, 90, "deliveries")
        cli.send_signal(signal.SIGKILL)
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == -signal.SIGKILL
    delivered = [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]
    assert 8 * RATE < len(delivered) < count
    sink.wait_caught_up()
    sink.assert_alive()
    in_topic = natural_keys(cluster.bootstrap, spec, since)
    attempted = {
        str(r[spec.natural_key]) for r in spec.generate(count, seed, start.replace(tzinfo=UTC), span=timedelta(hours=1))
    }
    counts = assert_delivered_exactly_once(delivered, in_topic, attempted)  # type: ignore[arg-type]
    print(  # noqa: T201
        f"txp produce killed: {len(delivered)} reported delivered, {sum(counts.values())} of its records in the topic "
        f"(each once; {sum(counts.values()) - len(delivered)} acknowledged by Kafka after the last line it wrote)"
    )
    audit(cluster, spec, "kill -9 of txp produce")
