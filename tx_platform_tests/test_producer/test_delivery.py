"""The producer against the real stack: the compiled encoder, the preparing process, the same records either way."""

import multiprocessing
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition

from tx_platform.config import Settings
from tx_platform.contract import AvroRecordSerializer, register_contract, registry_client
from tx_platform.errors import ConfigError
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS, BlockedRecords, PipelineSpec
from tx_platform.pipelines.transactions._generator import BLOCK_RECORDS
from tx_platform.producer import INJECTED_HEADER, RecordProducer, WireEncoder, open_producer, produce
from tx_platform.producer._parallel import preparing_processes

pytestmark = pytest.mark.integration

START = datetime.now(UTC) - timedelta(hours=2)


def _read_topic(bootstrap: str, topic: str, partitions: int = 3) -> dict[int, list[tuple]]:
    """Every record of ``topic``, per partition in offset order: (key, value, headers)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False})
    try:
        out: dict[int, list[tuple]] = {}
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            consumer.assign([TopicPartition(topic, p, low)])
            rows: list[tuple] = []
            while len(rows) < high - low:
                for msg in consumer.consume(1_000, timeout=5):
                    assert msg.error() is None, msg.error()
                    rows.append((msg.key(), msg.value(), tuple(msg.headers() or ())))
            out[p] = rows
        return out
    finally:
        consumer.close()


@pytest.mark.parametrize("pipeline", [TRANSACTIONS, CRYPTO_TRADES], ids=lambda s: s.name)
def test_the_compiled_encoder_writes_what_confluents_serializer_wrote(
    settings: Settings, unique: str, pipeline: PipelineSpec
) -> None:
    spec = pipeline.with_topic(f"enc_{unique}")
    url, text = settings.schema_registry_url, spec.contract.schema_str
    client = registry_client(url)
    registration = register_contract(client, url, text, spec.subject)
    confluent = AvroRecordSerializer(client, spec.topic, text)
    encoder = WireEncoder(text, registration.schema_id)
    records = list(spec.generate(2_000, seed=4, start=START, span=timedelta(hours=1)))
    assert [encoder(r) for r in records] == [confluent(r) for r in records]


def _producer_on_new_topic(
    settings: Settings, create_topic: Callable[[str], None], topic: str, bad_ratio: float, seed: int
) -> tuple[PipelineSpec, RecordProducer]:
    """A transactions producer (``bad_ratio`` of its records made bad) on a topic made for it."""
    spec = TRANSACTIONS.with_topic(topic)
    create_topic(spec.topic)
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, bad_ratio, seed=seed)
    return spec, producer


def test_preparing_in_a_child_sends_the_same_records_in_the_same_order(
    settings: Settings, unique: str, create_topic
) -> None:
    count, outcomes = 12_000, []
    for mode in ("inline", "child"):
        spec, producer = _producer_on_new_topic(settings, create_topic, f"par_{mode}_{unique}", 0.03, 6)
        records = spec.generate(count, 6, START, span=timedelta(hours=1))
        report = produce(records, producer, prepare_in_child=(mode == "child"))
        assert (report.sent, report.delivered, report.failed) == (count, count, 0)
        faults = producer.faults
        assert faults is not None
        state = (producer.good_totals, faults.injected, faults.next_kind, faults.rng_state())
        outcomes.append((state, _read_topic(settings.kafka_bootstrap, spec.topic)))
    (inline_state, inline_rows), (child_state, child_rows) = outcomes
    assert child_state == inline_state
    assert child_rows == inline_rows
    assert sum(len(rows) for rows in child_rows.values()) == count
    injected = [r for rows in child_rows.values() for r in rows if r[2]]
    assert len(injected) == sum(inline_state[1].values()) > 0
    assert all(r[2][0][0] == INJECTED_HEADER for r in injected)
    assert not multiprocessing.active_children()


def test_records_in_blocks_are_prepared_by_several_processes_and_sent_in_the_streams_order(
    settings: Settings, unique: str, create_topic
) -> None:
    count = 30_000
    outcomes = []
    for in_children in (False, True):
        spec, producer = _producer_on_new_topic(settings, create_topic, f"blk_{int(in_children)}_{unique}", 0.0, 8)
        # two runs on one producer: the totals add up across runs, however many processes prepared them
        for seed in (8, 9):
            records = spec.generate(count, seed, START, span=timedelta(hours=1))
            assert isinstance(records, BlockedRecords) and len(records.blocks) == -(-count // BLOCK_RECORDS)
            if in_children:
                assert preparing_processes(records, producer) == min(os.cpu_count() or 1, len(records.blocks)) >= 2
            report = produce(records, producer, prepare_in_child=in_children)
        assert (report.sent, report.delivered, report.failed) == (2 * count, 2 * count, 0)
        outcomes.append((producer.good_totals, _read_topic(settings.kafka_bootstrap, spec.topic)))
    (inline_totals, inline_rows), (totals, rows) = outcomes
    assert totals == inline_totals and totals["amount"] > 0
    assert rows == inline_rows and sum(len(r) for r in rows.values()) == 2 * count
    assert not multiprocessing.active_children()
    # with faults injected (one random source, record after record), one process prepares
    spec, producer = _producer_on_new_topic(settings, create_topic, f"blk_faults_{unique}", 0.01, 8)
    assert preparing_processes(spec.generate(count, 8, START, span=timedelta(hours=1)), producer) == 1


def test_an_error_while_preparing_in_the_child_is_raised_here_and_the_child_is_gone(
    settings: Settings, spec: PipelineSpec, create_topic
) -> None:
    create_topic(spec.topic)
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, seed=2)

    def records() -> Iterator[dict]:
        yield from spec.generate(5_000, 2, START, span=timedelta(hours=1))
        msg = "the generator broke"
        raise ConfigError(msg)

    with pytest.raises(ConfigError, match="the generator broke"):
        produce(records(), producer, prepare_in_child=True)
    # what was prepared before the error was sent and acknowledged; nothing is left running
    assert producer.report.sent == producer.report.delivered == 5_000
    assert not multiprocessing.active_children()


def test_a_rate_limited_run_serves_callbacks_while_it_waits(
    settings: Settings, spec: PipelineSpec, create_topic
) -> None:
    create_topic(spec.topic)
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, seed=3)
    seen: list[int] = []
    producer.report.observer = lambda err, _msg: seen.append(err is None)
    records = spec.generate(40, 3, START, span=timedelta(hours=1))
    acknowledged_midway: list[int] = []

    def progress(_n: int) -> None:
        acknowledged_midway.append(producer.report.delivered)

    started = datetime.now(UTC)
    report = produce(records, producer, rate=20, on_progress=progress, prepare_in_child=True)  # a rate: in-process
    elapsed = (datetime.now(UTC) - started).total_seconds()
    assert report.delivered == 40 and seen == [True] * 40
    assert elapsed >= 1.9  # 40 records at 20/s
    # far fewer than POLL_EVERY records were sent, yet the acks arrived during the waits, not at the flush
    assert acknowledged_midway[-1] >= 35


def test_kill_9_of_txp_produce_leaves_no_preparing_process(
    settings: Settings, spec: PipelineSpec, create_topic, tmp_path
) -> None:
    import os
    import signal
    import subprocess
    from pathlib import Path

    from tx_platform.config import PROJECT_ROOT
    from tx_platform_tests.conftest import assert_eventually

    create_topic(spec.topic)
    command = [str(PROJECT_ROOT / ".venv" / "bin" / "txp"), "produce", "--topic", spec.topic, "--count", "5000000"]
    with (tmp_path / "produce.out").open("w") as output:
        cli = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=os.environ)  # noqa: S603
    children = Path(f"/proc/{cli.pid}/task/{cli.pid}/children")
    try:
        # unseeded records in blocks, no faults: one preparing process per CPU (at least 2 here)
        wanted = min(os.cpu_count() or 1, 5_000_000 // BLOCK_RECORDS)
        found = assert_eventually(
            lambda: len(pids := children.read_text().split()) >= wanted and pids, 60, "the preparing processes"
        )
        pids = [int(pid) for pid in found]
        assert len(pids) == wanted >= 2
        for pid in pids:
            assert "produce" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        cli.send_signal(signal.SIGKILL)
        cli.wait(30)

        def children_gone() -> bool:
            for pid in pids:
                try:
                    if Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":  # exited, not yet reaped
                        return False
                except FileNotFoundError:
                    continue
            return True

        # each one's next chunk meets a pipe with no reader (no process holds another's reading end): EPIPE,
        # and it exits on its own
        assert_eventually(children_gone, 30, "every preparing process to exit after its parent's SIGKILL")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
