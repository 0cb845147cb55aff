"""The sink-side rows of the fault matrix: each fault, then the independent audit (lost = duplicated = unexplained = 0).

Every test mixes bad records into its topic (``BAD_RATIO``), so quarantine and the DLQ go through
the fault too. The audit (:func:`tx_platform.checks.audit_pipeline`) reads the topic itself and
compares it with the table, ``quarantine`` and the DLQ; its figures are printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from spark_jobs.sink import PipelineSink
from spark_jobs.sink._writer import UNFENCED_ENV
from tx_platform.config import Settings
from tx_platform.errors import DataLossError, SinkError
from tx_platform.pipelines import PipelineSpec
from tx_platform_tests.conftest import assert_eventually, fetch_all, fetch_one, produce_records
from tx_platform_tests.test_faults._sink import (
    BAD_RATIO,
    BackgroundProducer,
    SinkProcess,
    ancestor_running,
    assert_exact,
    audit,
    batches,
    committed,
    event_log,
    slices_committed,
    socket_owner,
    topic_end,
    wait_caught_up,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]


def _small_batches(settings: Settings, records: int = 1_000) -> Settings:
    """Several micro-batches per run: a replay then has a committed batch before it."""
    return settings.model_copy(update={"max_offsets_per_trigger": records})


def _rows(settings: Settings, spec: PipelineSpec) -> int:
    return int(fetch_one(settings.dsn(), f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s", spec.topic)[0])  # noqa: S608


def _newest(directory: Path) -> int:
    return max(int(p.name) for p in directory.iterdir() if p.name.isdigit())


# --- row 7: a crash between the Postgres commit and Spark's checkpoint commit (and the negative control)


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "unfenced-control"])
def test_a_batch_replayed_after_its_postgres_commit_writes_nothing_twice_unless_the_fence_is_broken(  # noqa: ANN001
    spark, settings: Settings, spec: PipelineSpec, create_topic, monkeypatch, fenced: bool
) -> None:
    create_topic(spec.topic)
    produce_records(spec, settings, 3_000, seed=71, bad_ratio=BAD_RATIO)
    small = _small_batches(settings)
    first = PipelineSink(spark, spec, small).run_available_now()
    assert (first.records, first.skipped) == (3_000, 0)
    assert first.batches >= 3, first
    # the crash: Postgres committed the two newest batches, Spark never wrote their commit files
    commits = Path(spec.checkpoint(settings.checkpoint_root)) / "commits"
    newest = {_newest(commits), _newest(commits) - 1}
    for batch_id in newest:
        (commits / str(batch_id)).unlink()
        (commits / f".{batch_id}.crc").unlink(missing_ok=True)
    replayed = [b for b in batches(settings, spec) if b[0] in newest]
    replayed_records = sum(b[2] for b in replayed)
    replayed_inserted = sum(b[3] for b in replayed)
    assert replayed_records > 0
    if not fenced:
        monkeypatch.setenv(UNFENCED_ENV, "1")
    second = PipelineSink(spark, spec, small).run_available_now()
    print(f"replay of batches {sorted(newest)} ({replayed_records} records, {replayed_inserted} rows): {second}")  # noqa: T201
    assert second.records == replayed_records  # Spark replayed exactly those batches
    if fenced:
        assert (second.skipped, second.inserted, second.quarantined) == (replayed_records, 0, 0)
        assert_exact(settings, spec, "replay, fenced")
    else:
        assert second.skipped == 0
        result = audit(settings, spec, "replay, UNFENCED (negative control)")
        # the checker can fail: every row of the replayed batches is stored twice (again, as a duplicate)
        assert result.duplicated == replayed_inserted > 0, result.as_dict()
        assert not result.ok


# --- row 4: the checkpoint deleted, or corrupted


def test_the_sink_resumes_from_postgres_when_its_checkpoint_is_deleted(  # noqa: ANN001
    spark, settings: Settings, spec: PipelineSpec, create_topic
) -> None:
    create_topic(spec.topic)
    produce_records(spec, settings, 2_000, seed=41, bad_ratio=BAD_RATIO)
    small = _small_batches(settings, 700)
    assert PipelineSink(spark, spec, small).run_available_now().records == 2_000
    produce_records(spec, settings, 1_000, seed=42, bad_ratio=BAD_RATIO)
    shutil.rmtree(spec.checkpoint(settings.checkpoint_root))
    resumed = PipelineSink(spark, spec, small).run_available_now()
    # from the offsets in Postgres: only the new records, none read twice
    assert (resumed.records, resumed.skipped) == (1_000, 0), resumed
    assert_exact(settings, spec, "checkpoint deleted")


@pytest.mark.parametrize("damage", ["offsets", "commits"])
def test_a_corrupted_checkpoint_is_set_aside_and_the_sink_resumes_from_postgres(  # noqa: ANN001
    spark, settings: Settings, spec: PipelineSpec, create_topic, caplog, damage: str
) -> None:
    create_topic(spec.topic)
    produce_records(spec, settings, 2_000, seed=43, bad_ratio=BAD_RATIO)
    small = _small_batches(settings, 700)
    assert PipelineSink(spark, spec, small).run_available_now().records == 2_000
    produce_records(spec, settings, 1_000, seed=44, bad_ratio=BAD_RATIO)
    root = Path(spec.checkpoint(settings.checkpoint_root))
    newest = root / damage / str(_newest(root / damage))
    newest.write_bytes(newest.read_bytes()[:7] + b"\x00garbled")  # a torn write: cut mid-file, then garbage
    with caplog.at_level(logging.WARNING, logger="spark_jobs.sink"):
        resumed = PipelineSink(spark, spec, small).run_available_now()
    # recovered on its own: the damaged checkpoint moved aside (kept for inspection), progress read from Postgres
    [warning] = [r.getMessage() for r in caplog.records if "[CHECKPOINT_DAMAGED]" in r.getMessage()]
    print(f"corrupted {newest.relative_to(root)}: {warning}; then {resumed}")  # noqa: T201
    assert str(newest) in warning
    [aside] = root.parent.glob(f"{root.name}.damaged-*")
    assert (aside / damage / newest.name).read_bytes().endswith(b"\x00garbled")
    assert (resumed.records, resumed.skipped) == (1_000, 0), resumed
    assert_exact(settings, spec, f"checkpoint {damage} corrupted")


# --- row 5: retention deletes records the sink never read


def test_records_deleted_by_retention_stop_the_sink_or_are_recorded_and_accounted_for(  # noqa: ANN001
    spark, settings: Settings, spec: PipelineSpec, create_topic
) -> None:
    create_topic(spec.topic)
    produce_records(spec, settings, 1_500, seed=51, bad_ratio=BAD_RATIO)
    assert PipelineSink(spark, spec, settings).run_available_now().records == 1_500
    produce_records(spec, settings, 1_500, seed=52, bad_ratio=BAD_RATIO)
    ledger = committed(settings, spec)
    end = topic_end(settings, spec)
    # retention takes the next 40 unread records of partition 0 and 25 of partition 2; partition 1 keeps all
    deleted = {0: (ledger[0], ledger[0] + 40), 2: (ledger[2], ledger[2] + 25)}
    assert all(stop < end[p] for p, (_start, stop) in deleted.items()), (ledger, end)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(spec.topic, p, stop) for p, (_s, stop) in deleted.items()])
    for future in futures.values():
        future.result(timeout=30)
    rows_before = _rows(settings, spec)
    with pytest.raises(DataLossError) as raised:
        PipelineSink(spark, spec, settings).run_available_now()
    message = str(raised.value)
    print(message)  # noqa: T201
    for p, (start, stop) in deleted.items():
        assert f"{spec.topic}[{p}] offsets {start}..{stop - 1} ({stop - start} records)" in message
    assert f"{spec.topic}[1]" not in message
    assert _rows(settings, spec) == rows_before  # stopped before writing anything
    recording = settings.model_copy(update={"sink_on_data_loss": "record"})
    resumed = PipelineSink(spark, spec, recording).run_available_now()
    assert resumed.records == 1_500 - sum(stop - start for start, stop in deleted.values())
    gaps = fetch_all(
        settings.dsn(),
        "SELECT partition, first_offset, next_offset FROM sink_gaps WHERE topic = %s ORDER BY partition",
        spec.topic,
    )
    assert gaps == [(p, start, stop) for p, (start, stop) in sorted(deleted.items())]
    # the audit reads the topic as it is now: the deleted records are gone from it, the rest stored once
    result = audit(settings, spec, "retention, gaps recorded")
    assert (result.lost, result.duplicated, result.unexplained) == (0, 0, 0), result.as_dict()
    assert result.dlq == result.quarantined
    assert result.records == 3_000 - sum(stop for _start, stop in deleted.values())  # read from each log start


# --- row 6: the registry down when the sink starts with schema ids it has never seen


def test_a_sink_starting_without_the_registry_writes_nothing_then_everything_once(  # noqa: ANN001
    spark, settings: Settings, spec: PipelineSpec, create_topic, test_stack
) -> None:
    create_topic(spec.topic)
    produce_records(spec, settings, 1_500, seed=61, bad_ratio=BAD_RATIO)
    assert test_stack.registry.process.stop(timeout=30)
    try:
        with pytest.raises(SinkError, match=r"\[REGISTRY_UNAVAILABLE\] schema ids \[\d+"):
            PipelineSink(spark, spec, settings).run_available_now()
        # no guess: nothing stored, nothing quarantined, no offsets committed
        assert _rows(settings, spec) == 0
        assert fetch_one(settings.dsn(), "SELECT count(*) FROM quarantine WHERE kafka_topic = %s", spec.topic)[0] == 0
        assert set(committed(settings, spec).values()) <= {0}  # seeded at 0 by the start, never advanced
    finally:
        test_stack.up()
    stats = PipelineSink(spark, spec, settings).run_available_now()
    assert (stats.records, stats.skipped) == (1_500, 0), stats
    assert_exact(settings, spec, "registry down at start")


# --- row 1: kill -9 of the sink driver mid-batch, three times in a row, while a producer keeps writing


def _newest_batch(settings: Settings, spec: PipelineSpec) -> tuple[int, list[int]]:
    """The newest batch with a committed slice, and the partitions committed for it so far."""
    batch_id = fetch_one(settings.dsn(), "SELECT max(batch_id) FROM sink_batches WHERE topic = %s", spec.topic)[0]
    partitions = fetch_all(
        settings.dsn(),
        "SELECT DISTINCT unnest(partitions) FROM sink_batches WHERE topic = %s AND batch_id = %s ORDER BY 1",
        spec.topic,
        batch_id,
    )
    return int(batch_id), [int(p) for (p,) in partitions]


def _checkpoint_commits(commits: Path) -> int:
    return len([p for p in commits.iterdir() if p.name.isdigit()]) if commits.is_dir() else 0


@pytest.mark.heavy
def test_the_sink_driver_killed_mid_batch_three_times_while_a_producer_writes_loses_and_doubles_nothing(  # noqa: ANN001
    settings: Settings, spec: PipelineSpec, create_topic, tmp_path: Path
) -> None:
    create_topic(spec.topic)
    backlog = 6_000
    produce_records(spec, settings, backlog, seed=11, bad_ratio=BAD_RATIO)
    log = tmp_path / "sink.log"
    # small batches over a backlog: a batch is always in flight
    env = {"TXP_MAX_OFFSETS_PER_TRIGGER": "600"}
    producer = BackgroundProducer(spec, settings, rate=30, seed=12).start()
    kills = []
    sink: SinkProcess | None = None
    try:
        commits = Path(spec.checkpoint(settings.checkpoint_root)) / "commits"
        for _ in range(3):
            sink = SinkProcess(spec, settings, log, env=env)
            sink.wait_running()
            # first a batch of this run committed in Spark's checkpoint too: the batch killed next is then
            # replayed from the checkpoint on restart (an uncommitted first batch is re-planned from Postgres)
            done = _checkpoint_commits(commits)
            assert wait_for(lambda s=sink, d=done: s.alive() and _checkpoint_commits(commits) > d, timeout=300)
            seen = slices_committed(settings, spec)
            # one slice of a batch committed: kill before the others (or Spark's own commit) follow
            assert wait_for(lambda s=sink, n=seen: s.alive() and slices_committed(settings, spec) > n, timeout=180)
            processes = sink.kill9()
            batch_id, partitions = _newest_batch(settings, spec)
            kills.append({"batch": batch_id, "slices_committed": partitions, "processes_killed": processes})
        # the last start drains what is left in large batches
        sink = SinkProcess(spec, settings, log, env={"TXP_MAX_OFFSETS_PER_TRIGGER": "50000"})
        sink.wait_running()
        delivered = backlog + producer.stop()
        wait_caught_up(settings, spec, timeout=600, sink=sink)
        assert sink.stop() == 0, sink.tail()
    finally:
        if sink is not None:
            sink.cleanup()
        if producer.error is None:
            producer.stop()
    replays = [b for b in batches(settings, spec) if b[5] > 0]
    text = log.read_text(errors="replace")
    print(f"kills: {kills}; fenced replays (batch, partitions, records, inserted, quarantined, skipped): {replays}")  # noqa: T201
    assert text.count("==== start") == 4 and text.count("sink running") == 4
    # at least one kill landed mid-batch: the restarted sink re-read records already committed, and wrote them nowhere
    assert replays, kills
    assert sum(b[5] for b in replays) > 0
    result = assert_exact(settings, spec, "sink driver killed 3 times")
    assert result.records == delivered


# --- row 3: Postgres killed (immediate shutdown) mid-commit, then restarted

#: A transaction of a slice commit in flight, as pg_stat_activity shows it (the sink connects as the pipeline role).
_COMMIT_IN_FLIGHT = """
    SELECT pid, state, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND xact_start IS NOT NULL AND state <> 'idle'
      AND (query ILIKE '%%stage_%%' OR query ILIKE '%%sink_offsets%%' OR query ILIKE '%%sink_batches%%')
"""


@pytest.mark.heavy
def test_postgres_killed_mid_commit_and_restarted_loses_and_doubles_nothing(  # noqa: ANN001
    settings: Settings, spec: PipelineSpec, create_topic, test_stack, tmp_path: Path
) -> None:
    from tx_platform.warehouse import connect

    create_topic(spec.topic)
    produce_records(spec, settings, 12_000, seed=31, bad_ratio=BAD_RATIO)
    log = tmp_path / "sink.log"
    env = {"TXP_MAX_OFFSETS_PER_TRIGGER": "3000"}
    postgres = test_stack.postgres
    server_log = postgres.log_file
    log_start = server_log.stat().st_size if server_log.exists() else 0
    sink = SinkProcess(spec, settings, log, env=env)
    in_flight: list[tuple] = []
    try:
        sink.wait_running()
        assert wait_for(lambda: slices_committed(settings, spec) > 0, timeout=180)  # past the first commit
        watcher = connect(settings.dsn())
        watcher.autocommit = True
        try:
            with watcher.cursor() as cur:

                def commit_in_flight() -> bool:
                    cur.execute(_COMMIT_IN_FLIGHT)
                    in_flight[:] = cur.fetchall()
                    return bool(in_flight)

                assert wait_for(commit_in_flight, timeout=180, step=0.005), "no commit seen in flight"
                cur.execute("SELECT count(*) FROM sink_batches WHERE topic = %s", (spec.topic,))
                committed_at_kill = cur.fetchone()[0]
                postmaster = postgres.process.pid()
                assert postmaster is not None
                os.kill(postmaster, signal.SIGQUIT)  # what pg_ctl stop -m immediate sends: no checkpoint, no goodbye
        finally:
            with contextlib.suppress(Exception):
                watcher.close()
        assert_eventually(lambda: postgres.process.pid() is None, timeout=60, what="Postgres to stop")
        # the sink fails (its write task or its driver loses the connection) or waits; either way, restart it
        exited = wait_for(lambda: sink.proc.poll() is not None, timeout=60, step=0.5)
        sink.cleanup()
    finally:
        test_stack.up()  # Postgres back (crash recovery), and whatever else needs it
    recovery = server_log.read_text(errors="replace")[log_start:]
    sink_error = [line for line in log.read_text(errors="replace").splitlines() if "Error" in line or "ERROR" in line]
    print(f"killed Postgres during {in_flight}; sink exited by itself: {exited} ({sink.proc.returncode}); "  # noqa: T201
          f"slices committed before: {committed_at_kill}; first sink error: {sink_error[:1]}")  # fmt: skip
    assert "was interrupted" in recovery or "not properly shut down" in recovery, recovery[-2000:]
    sink = SinkProcess(spec, settings, log, env=env)
    try:
        sink.wait_running()
        wait_caught_up(settings, spec, sink=sink)
        assert sink.stop() == 0, sink.tail()
    finally:
        sink.cleanup()
    result = assert_exact(settings, spec, "Postgres killed mid-commit")
    assert result.records == 12_000


# --- row 2: kill -9 of an executor mid-task on a standalone cluster of two workers

#: Ports of the cluster's own stack: TXP_TEST_FAULTS_PORT_BASE and the 15 after it (else a free block).
_CLUSTER_PORTS = (
    "kafka_port", "controller_port", "postgres_port", "registry_port", "prometheus_port", "alertmanager_port",
    "pushgateway_port", "postgres_exporter_port", "metrics_port", "jmx_port", "spark_master_port",
    "spark_master_ui_port", "spark_worker_ui_port",  # the worker UIs take this port and the next
)  # fmt: skip


def _cluster_layout():  # noqa: ANN202 - StackLayout
    from tx_platform.stack import StackLayout, free_port_block

    base = int(os.environ.get("TXP_TEST_FAULTS_PORT_BASE", "0")) or free_port_block(16)
    ports: dict[str, Any] = {name: base + i for i, name in enumerate(_CLUSTER_PORTS)}
    return StackLayout(spark_workers=2, **ports), base


@pytest.mark.heavy
def test_an_executor_killed_mid_task_on_a_two_worker_cluster_is_retried_and_writes_nothing_twice(
    tmp_path: Path,
) -> None:
    from tx_platform.config import load_settings
    from tx_platform.kafka_admin import ensure_topic
    from tx_platform.pipelines import TRANSACTIONS
    from tx_platform.stack import LocalStack
    from tx_platform.warehouse import connect

    records, partitions = 40_000, 4
    layout, base = _cluster_layout()
    state, events = tmp_path / "stack", tmp_path / "events"
    events.mkdir()
    jars_dir = load_settings().jars_dir
    stack = LocalStack(state, jars_dir, layout)
    sink: SinkProcess | None = None
    try:
        stack.up()
        env = stack.env()
        settings = load_settings(
            kafka_bootstrap=env["TXP_KAFKA_BOOTSTRAP"],
            schema_registry_url=env["TXP_SCHEMA_REGISTRY_URL"],
            postgres_dsn=env["TXP_POSTGRES_DSN"],
            state_dir=state,
            checkpoint_dir=tmp_path / "checkpoints",
        )
        spec = TRANSACTIONS.with_topic("tx_executor_kill")
        ensure_topic(settings.kafka_bootstrap, spec.topic, partitions, 1)
        produce_records(spec, settings, records, seed=21, bad_ratio=BAD_RATIO)
        submit = (
            f"--conf spark.eventLog.enabled=true --conf spark.eventLog.compress=false "
            f"--conf spark.eventLog.dir=file://{events} "
            f"--conf spark.ui.port={base + 16} pyspark-shell"
        )
        sink = SinkProcess(
            spec, settings, tmp_path / "sink.log", available_now=True,
            env={**env, "TXP_MAX_OFFSETS_PER_TRIGGER": "8000", "PYSPARK_SUBMIT_ARGS": submit},
        )  # fmt: skip
        # a slice commit in flight: kill -9 the executor JVM whose Python worker holds that transaction
        watcher = None
        killed: dict[str, Any] = {}

        def executor_committing() -> bool:
            nonlocal watcher
            if sink.proc.poll() is not None:
                return True
            try:
                if watcher is None:
                    watcher = connect(settings.dsn())
                    watcher.autocommit = True
                with watcher.cursor() as cur:
                    cur.execute(_COMMIT_IN_FLIGHT.replace("SELECT pid,", "SELECT client_port,"))
                    rows = cur.fetchall()
            except Exception:  # noqa: BLE001 - the sink may not have created its tables yet
                return False
            for client_port, _state, query in rows:
                owner = socket_owner(int(client_port), layout.postgres_port)
                executor = ancestor_running(owner, "CoarseGrainedExecutorBackend") if owner else None
                if executor is not None:
                    argv = (Path(f"/proc/{executor}") / "cmdline").read_bytes().split(b"\0")
                    killed.update(pid=executor, executor_id=argv[argv.index(b"--executor-id") + 1].decode(),
                                  python_worker=owner, query=query)  # fmt: skip
                    os.kill(executor, signal.SIGKILL)
                    return True
            return False

        try:
            assert wait_for(executor_committing, timeout=600, step=0.01)
        finally:
            if watcher is not None:
                watcher.close()
        assert killed, f"the sink finished before an executor was seen committing:\n{sink.tail()}"
        assert sink.wait(timeout=900) == 0, sink.tail()
        result = assert_exact(settings, spec, "executor killed on a 2-worker cluster")
        assert result.records == records
        log = event_log(events)
        batches_seen = batches(settings, spec)
        replayed = [b for b in batches_seen if b[5] > 0]
    finally:
        if sink is not None:
            sink.cleanup()
        stack.down()
        LocalStack(state, jars_dir).down(purge=True)
    # the event log: which executor (on which worker) ran which write task, and the task the kill failed
    worker_of = {
        e["Executor ID"]: int(e["Executor Info"]["Log Urls"]["stderr"].split(":")[2].split("/")[0])
        for e in log
        if e["Event"] == "SparkListenerExecutorAdded"
    }
    # every job of the sink's application is a batch's write (the collect of the slice results in
    # foreachBatch), one stage each, one task per Kafka partition with records
    write_stages = {e["Stage Info"]["Stage ID"] for e in log if e["Event"] == "SparkListenerStageCompleted"}
    assert len(write_stages) == len({b[0] for b in batches_seen}), (write_stages, batches_seen)
    write_tasks = [e for e in log if e["Event"] == "SparkListenerTaskEnd" and e["Stage ID"] in write_stages]
    failed = [
        (t["Task Info"]["Executor ID"], t["Task End Reason"]["Reason"])
        for t in write_tasks
        if t["Task End Reason"]["Reason"] != "Success"
    ]
    per_worker: dict[int, dict[str, int]] = {}
    for t in write_tasks:
        if t["Task End Reason"]["Reason"] == "Success":
            figures = per_worker.setdefault(worker_of[t["Task Info"]["Executor ID"]], {"tasks": 0, "records": 0})
            figures["tasks"] += 1
            figures["records"] += t["Task Metrics"]["Input Metrics"]["Records Read"]
    print(f"killed executor {killed}; failed write tasks {failed}; executors by worker UI port {worker_of}; "  # noqa: T201
          f"successful write tasks by worker UI port {per_worker}; fenced replays {replayed}")  # fmt: skip
    assert any(executor == killed["executor_id"] and reason == "ExecutorLostFailure" for executor, reason in failed)
    # rows were written by both workers' executors, and the successful tasks read every record once
    assert set(per_worker) == {layout.spark_worker_ui_port, layout.spark_worker_ui_port + 1}
    assert all(f["records"] > 0 for f in per_worker.values())
    assert sum(f["records"] for f in per_worker.values()) == records
