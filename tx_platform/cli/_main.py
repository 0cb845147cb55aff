"""The `txp` command line."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tx_platform.config import PROJECT_ROOT, load_settings
from tx_platform.errors import TxPlatformError
from tx_platform.pipelines import DEFAULT_PIPELINE, PIPELINES, get_pipeline
from tx_platform.stack import LocalStack, StackLayout

if TYPE_CHECKING:
    from tx_platform.producer import DeliveryReport

err = Console(stderr=True)
out = Console()


#: Port variables of `txp stack up`; every command that starts the stack honours them.
_PORT_VARS = {
    "kafka_port": "TXP_STACK_KAFKA_PORT",
    "controller_port": "TXP_STACK_CONTROLLER_PORT",
    "postgres_port": "TXP_STACK_POSTGRES_PORT",
    "registry_port": "TXP_STACK_REGISTRY_PORT",
    "prometheus_port": "TXP_STACK_PROMETHEUS_PORT",
    "alertmanager_port": "TXP_STACK_ALERTMANAGER_PORT",
    "pushgateway_port": "TXP_STACK_PUSHGATEWAY_PORT",
    "postgres_exporter_port": "TXP_STACK_POSTGRES_EXPORTER_PORT",
    "metrics_port": "TXP_STACK_METRICS_PORT",
    "jmx_port": "TXP_STACK_JMX_PORT",
    "spark_master_port": "TXP_STACK_SPARK_MASTER_PORT",
    "spark_master_ui_port": "TXP_STACK_SPARK_MASTER_UI_PORT",
    "spark_worker_ui_port": "TXP_STACK_SPARK_WORKER_UI_PORT",
}
#: Ports `txp stack up` has options for (their options read the same variables).
_CORE_PORTS = ("kafka_port", "controller_port", "postgres_port", "registry_port")


def _env_ports(fields: Iterable[str] = _PORT_VARS) -> dict[str, Any]:
    """Ports set by TXP_STACK_* variables, for the layout fields ``fields``."""
    return {field: int(os.environ[_PORT_VARS[field]]) for field in fields if os.environ.get(_PORT_VARS[field])}


def _stack(state_dir: Path | None, layout: StackLayout | None = None) -> LocalStack:
    settings = load_settings()
    ports = _env_ports()
    if layout is None and ports:
        # so that `txp dev` and `txp demo` start the stack where `txp stack up` would
        layout = dataclasses.replace(
            StackLayout(), spark_workers=int(os.environ.get("TXP_STACK_SPARK_WORKERS") or 0), **ports
        )
    return LocalStack(state_dir or settings.state_dir, settings.jars_dir, layout)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """tx_platform: pipelines of events (card transactions, crypto trades) through Kafka, Spark and PostgreSQL,
    run by Dagster."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "urllib3", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- stack -------------------------------------------------------------------------------------
@cli.group()
def stack() -> None:
    """Start, stop and inspect the local stack (Kafka KRaft, PostgreSQL)."""


_state_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="TXP_STATE_DIR",
    default=None,
    help=f"Where data, logs and pid files live [default: {PROJECT_ROOT / '.txp'}].",
    show_envvar=True,
)


@stack.command("setup")
@click.option("--force", is_flag=True, help="Resolve again even when the cache looks complete.")
def stack_setup(force: bool) -> None:
    """Check Java and PostgreSQL, resolve JVM artifacts with Maven (skipped when cached)."""
    from tx_platform.stack import require_java, resolve_artifacts
    from tx_platform.stack._postgres import find_pg_bindir

    settings = load_settings()
    require_java()
    bindir = find_pg_bindir()
    from tx_platform.stack import Artifacts

    if force or not Artifacts(settings.jars_dir).is_complete():
        # printed, not only a spinner: CI logs show why this step takes a while the first time
        err.print(
            "resolving JVM artifacts with Maven (Kafka, Spark connectors, schema registry); "
            "the first run downloads about 250 MB and takes a few minutes…"
        )
    with err.status("resolving JVM artifacts with Maven…"):
        started = time.monotonic()
        artifacts = resolve_artifacts(settings.jars_dir, force=force)
    jars = sum(1 for _ in artifacts.root.rglob("*.jar"))
    out.print(
        f"[green]ok[/] java, PostgreSQL ({bindir}), {jars} jars in {artifacts.root} "
        f"({time.monotonic() - started:.1f} s)"
    )


@stack.command("up")
@_state_option
@click.option("--kafka-port", default=9092, show_default=True, envvar="TXP_STACK_KAFKA_PORT", show_envvar=True)
@click.option(
    "--controller-port", default=9093, show_default=True, envvar="TXP_STACK_CONTROLLER_PORT", show_envvar=True
)
@click.option("--postgres-port", default=5433, show_default=True, envvar="TXP_STACK_POSTGRES_PORT", show_envvar=True)
@click.option("--registry-port", default=8081, show_default=True, envvar="TXP_STACK_REGISTRY_PORT", show_envvar=True)
@click.option("--brokers", default=1, show_default=True, help="Kafka brokers (>1: separate controller nodes).")
@click.option("--controllers", default=1, show_default=True, help="KRaft controllers.")
@click.option(
    "--spark-workers",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    envvar="TXP_STACK_SPARK_WORKERS",
    show_envvar=True,
    help="Spark standalone workers (1 core, 2g each) under a master on 127.0.0.1; 0: sinks run local[*].",
)
def stack_up(
    state_dir: Path | None,
    kafka_port: int,
    controller_port: int,
    postgres_port: int,
    registry_port: int,
    brokers: int,
    controllers: int,
    spark_workers: int,
) -> None:
    """Start every service that is not running and wait until each is ready (idempotent)."""
    layout = StackLayout(
        kafka_port=kafka_port,
        controller_port=controller_port,
        postgres_port=postgres_port,
        registry_port=registry_port,
        brokers=brokers,
        controllers=controllers,
        spark_workers=spark_workers,
        # monitoring ports have no options of their own: TXP_STACK_<NAME>_PORT sets them
        **_env_ports(f for f in _PORT_VARS if f not in _CORE_PORTS),
    )
    s = _stack(state_dir, layout)
    with err.status("starting the local stack…"):
        s.up()
    _print_status(s)
    out.print(f'connection settings: [bold]eval "$(txp stack env)"[/] (state in {s.state_dir})')


@stack.command("down")
@_state_option
@click.option("--purge", is_flag=True, help="Also delete all data (topics, tables, checkpoints).")
def stack_down(state_dir: Path | None, purge: bool) -> None:
    """Stop every service of the local stack; nothing is left running."""
    s = _stack(state_dir)
    stopped = s.down(purge=purge)
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}" + (" (data purged)" if purge else ""))


@stack.command("status")
@_state_option
def stack_status(state_dir: Path | None) -> None:
    """Show each service with its state, pid, ports and log file.

    Exit 1 if a service that should run is down; an optional one that is not installed is not an error.
    """
    s = _stack(state_dir)
    _print_status(s)
    if not all(row.running or row.not_installed for row in s.status()):
        sys.exit(1)


@stack.command("jars")
def stack_jars() -> None:
    """Print the Spark connector jars as one comma-separated list (for spark-submit --jars)."""
    from tx_platform.stack import resolve_artifacts

    click.echo(",".join(str(j) for j in resolve_artifacts(load_settings().jars_dir).spark_jars()))


@stack.command("env")
@_state_option
def stack_env(state_dir: Path | None) -> None:
    """Print `export` lines for the stack's connection settings: eval "$(txp stack env)"."""
    click.echo(_stack(state_dir).export_lines())


def _print_status(s: LocalStack) -> None:
    table = Table("service", "state", "pid", "ports", "log")
    table.columns[1].overflow = "fold"  # a narrow terminal must not cut the package name to install
    dagster = s.dagster_status()
    for row in [*s.status(), *([dagster] if dagster else [])]:
        if row.running:
            state = "[green]running[/]"
        elif row.not_installed:
            state = f"[yellow]not installed — apt-get install {row.not_installed}[/]"
        else:
            state = "[red]stopped[/]"
        log = "-" if row.not_installed else str(row.log_file)
        table.add_row(row.name, state, str(row.pid or "-"), ",".join(map(str, row.ports)), log)
    out.print(table)
    if any(row.name == "prometheus" and row.running for row in s.status()):
        _print_monitoring(s.env()["TXP_PROMETHEUS_URL"])


def _print_monitoring(prometheus_url: str) -> None:
    """Scrape targets' health, and each pipeline's lag and e2e p99, as Prometheus has them."""
    from tx_platform.stack._monitoring import monitoring_summary

    summary = monitoring_summary(prometheus_url)
    if summary.error:
        out.print(f"[yellow]{summary.error}[/]")
        return
    if not summary.targets:  # right after `txp stack up`: the first scrape has not happened yet
        out.print("Prometheus has not scraped its targets yet (every 5 s): run `txp stack status` again")
        return
    targets = Table("scrape target", "instance", "health", "last error")
    for t in summary.targets:
        health = "[green]up[/]" if t.health == "up" else f"[red]{t.health}[/]"
        targets.add_row(t.job, t.instance, health, t.last_error or "-")
    out.print(targets)
    pipelines = Table("pipeline", "lag (records)", "e2e p99, last 5 min")
    for p in summary.pipelines:
        p99 = "no commits" if p.e2e_p99_seconds is None else f"{p.e2e_p99_seconds:.2f} s"
        pipelines.add_row(p.pipeline, "-" if p.lag is None else f"{p.lag:,}", p99)
    out.print(pipelines if summary.pipelines else "no pipeline metrics yet (is `txp metrics serve` up?)")


# -- pipelines ---------------------------------------------------------------------------------
_pipeline_option = click.option(
    "--pipeline",
    "-p",
    type=click.Choice(sorted(PIPELINES)),
    default=DEFAULT_PIPELINE,
    envvar="TXP_PIPELINE",
    show_envvar=True,
    show_default=True,
    help="The pipeline (see `txp pipelines`).",
)


def _topic_option(what: str) -> Any:  # noqa: ANN401 - click's decorator
    return click.option("--topic", default=None, help=f"{what} [default: the pipeline's topic; its DLQ: <topic>.dlq].")


@cli.command("pipelines")
def pipelines_command() -> None:
    """List the pipelines: name, topic, table, keys and how many rules check their records."""
    rows = [("pipeline", "topic", "table", "natural key", "Kafka key", "rules")]
    for spec in PIPELINES.values():
        name = f"{spec.name}*" if spec.name == DEFAULT_PIPELINE else spec.name
        rows.append((name, spec.topic, spec.table, spec.natural_key, spec.kafka_key, str(len(spec.rules))))
    # plain aligned columns: names are never cut or wrapped, whatever the terminal's width
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    click.echo("* the default (or TXP_PIPELINE); each topic's dead letters go to <topic>.dlq")


# -- topics ------------------------------------------------------------------------------------
@cli.group()
def topics() -> None:
    """Kafka topics of a pipeline."""


@topics.command("create")
@_pipeline_option
@_topic_option("Topic to create")
@click.option("--partitions", type=click.IntRange(min=1), default=None, help="[default: TXP_TOPIC_PARTITIONS or 3]")
@click.option("--replication", type=click.IntRange(min=1), default=None, help="[default: TXP_TOPIC_REPLICATION or 1]")
def topics_create(pipeline: str, topic: str | None, partitions: int | None, replication: int | None) -> None:
    """Create the pipeline's topic and its dead-letter topic if missing (what its kafka/* assets do)."""
    from spark_jobs.sink._dlq import DLQ_MAX_MESSAGE_BYTES
    from tx_platform.kafka_admin import ensure_topic

    settings = load_settings()
    spec = get_pipeline(pipeline, topic)
    count = partitions or settings.topic_partitions
    factor = replication or settings.topic_replication
    for each, config in ((spec.topic, None), (spec.dlq_topic, {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)})):
        created = ensure_topic(settings.kafka_bootstrap, each, count, factor, config)
        out.print(f"{each}: {'created' if created else 'exists'} ({count} partitions, replication {factor})")


@topics.command("forget")
@_pipeline_option
@_topic_option("Topic to forget")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def topics_forget(pipeline: str, topic: str | None, yes: bool) -> None:
    """Delete a topic's rows, quarantine, offsets and DLQ progress, and the sink's checkpoint.

    For a topic that was deleted and created again ([TOPIC_RECREATED]): its offsets start over,
    so the warehouse must forget the old ones before the sink reads it again. Kafka is not touched.
    """
    from tx_platform.warehouse import connect, forget_topic

    settings = load_settings()
    spec = get_pipeline(pipeline, topic)
    if not yes:
        click.confirm(f"delete every row of {spec.topic!r} from the warehouse?", abort=True)
    conn = connect(settings.dsn())
    try:
        deleted = forget_topic(conn, spec)
    finally:
        conn.close()
    shutil.rmtree(spec.checkpoint(settings.checkpoint_root), ignore_errors=True)
    out.print(
        f"{spec.topic}: deleted " + ", ".join(f"{n} from {t}" for t, n in deleted.items()) + ", and the checkpoint"
    )


@cli.group()
def dlq() -> None:
    """Dead-letter topics: records a pipeline's sink rejected, with why."""


@dlq.command("show")
@_pipeline_option
@_topic_option("Source topic whose dead letters to show")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="Records to show.")
def dlq_show(pipeline: str, topic: str | None, limit: int) -> None:
    """Print the newest dead-letter records of a pipeline: source coordinates, error code, reason, value size."""
    from confluent_kafka import Message, TopicPartition

    from tx_platform.kafka_admin import end_offsets, offset_consumer

    settings = load_settings()
    name = get_pipeline(pipeline, topic).dlq_topic
    ends = end_offsets(settings.kafka_bootstrap, name)
    consumer = offset_consumer(settings.kafka_bootstrap)
    consumer.assign([TopicPartition(name, p, max(0, end - limit)) for p, end in ends.items()])
    rows: list[Message] = []
    finished: set[int] = set()
    while len(finished) < len(ends):
        message = consumer.poll(2.0)
        if message is None:
            break
        if message.error() is not None:
            finished.add(message.partition() or 0)  # end of partition
            continue
        rows.append(message)
    consumer.close()
    rows.sort(key=lambda m: m.timestamp()[1])
    table = Table("source", "error code", "reason", "value bytes")
    for message in rows[-limit:]:
        headers = {k: _text(v) for k, v in list(message.headers() or [])}
        source = "{}[{}]@{}".format(
            headers.get("txp.source.topic"), headers.get("txp.source.partition"), headers.get("txp.source.offset")
        )
        value = message.value()
        size = "null" if value is None else str(len(value))
        table.add_row(source, headers.get("txp.error.code", "?"), headers.get("txp.error.message", ""), size)
    out.print(table)
    out.print(f"{sum(ends.values())} records in {name}")


@cli.command()
@_pipeline_option
@_topic_option("Topic to audit")
def audit(pipeline: str, topic: str | None) -> None:
    """Count every record of a pipeline's topic against its table, quarantine and DLQ: lost, duplicated, unexplained.

    Reads the topic, the warehouse and the dead-letter topic independently of the sink's ledger. Run it once
    the sink has caught up (records not read yet count as lost). Prints JSON; exits 1 unless all three are 0.
    """
    from tx_platform.checks import audit_pipeline
    from tx_platform.warehouse import connect

    settings = load_settings()
    spec = get_pipeline(pipeline, topic)
    conn = connect(settings.dsn())
    try:
        report = audit_pipeline(conn, settings.kafka_bootstrap, spec)
    finally:
        conn.close()
    click.echo(json.dumps(report.as_dict()))
    if not report.ok:
        sys.exit(1)


@cli.group()
def db() -> None:
    """The warehouse's schema: versioned migrations."""


def _owner_dsn(dsn: str | None) -> str:
    """``--dsn``/TXP_OWNER_DSN, else the local stack's owner login (stack.env), else TXP_POSTGRES_DSN."""
    if dsn:
        return dsn
    settings = load_settings()
    env_file = settings.state_dir / "stack.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("TXP_OWNER_DSN="):
                return line.partition("=")[2]
    return settings.dsn()


@db.command("migrate")
@click.option(
    "--dsn",
    default=None,
    envvar="TXP_OWNER_DSN",
    show_envvar=True,
    help="Warehouse DSN of the role that owns the schema [default: the local stack's owner].",
)
@click.option("--status", is_flag=True, help="Show what is applied and what is pending; apply nothing.")
def db_migrate(dsn: str | None, status: bool) -> None:
    """Apply the warehouse's pending migrations: shared tables, then each pipeline's, in version order.

    Each file runs once, in its own transaction, and is recorded in schema_migrations with its checksum
    (an applied file edited since stops the run with [MIGRATION_CHANGED]). Then each pipeline's table
    gets the CHECKs of its rules and its daily partitions ahead. `txp stack up` runs it too.
    """
    from tx_platform.warehouse import migrate, migration_status

    target = _owner_dsn(dsn)
    if status:
        applied, pending = migration_status(target)
        for row in applied:
            click.echo(f"applied  {row.scope}/{row.version:04d}_{row.name}  {row.applied_at:%Y-%m-%d %H:%M:%S%z}")
        for migration in pending:
            click.echo(f"pending  {migration.label}")
        click.echo(f"{len(applied)} applied, {len(pending)} pending")
        return
    done = migrate(target, log=click.echo)
    click.echo(f"{len(done)} migration(s) applied" if done else "nothing to apply: the warehouse is up to date")


@db.command("load-dimensions")
@click.option("--seed", "-s", default=42, show_default=True, help="Seed of the producer's pools (txp produce --seed).")
def db_load_dimensions(seed: int) -> None:
    """Write the dimensions merchants (type 1), customers (type 2 on the address) and cards from the
    producer's entity pools for SEED: the same entities `txp produce --seed SEED` samples. Idempotent; a
    customer whose address changed gets a new current version, the old one closed."""
    from tx_platform.warehouse import connect, load_dimensions, pool_rows

    merchants, customers, cards = pool_rows(seed)
    conn = connect(load_settings().dsn())
    try:
        done = load_dimensions(conn, merchants, customers, cards)
    finally:
        conn.close()
    click.echo(
        f"merchants written {done.merchants_written}, customers added {done.customers_added}, "
        f"closed {done.customers_closed}, renamed {done.customers_renamed}, cards added {done.cards_added}"
    )


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


# -- produce -----------------------------------------------------------------------------------
class _RateColumn(ProgressColumn):
    """Records per second, once rich has measured it."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("   … rec/s" if speed is None else f"{speed:>8,.0f} rec/s", style="progress.data.speed")


@cli.command()
@click.option("--count", "-n", default=10_000, show_default=True, type=click.IntRange(min=0), help="Records to send.")
@click.option(
    "--rate", "-r", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Records/s; 0 = unthrottled."
)  # noqa: E501
@click.option("--seed", "-s", default=42, show_default=True, help="Same seed and start, same records (UUIDs too).")
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    default=None,
    help="UTC time of the first record [default: now minus --span-hours].",
)
@click.option(
    "--span-hours",
    default=24.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Time the records spread over.",
)  # noqa: E501
@click.option(
    "--bootstrap", envvar="TXP_KAFKA_BOOTSTRAP", default=None, help="Kafka bootstrap servers.", show_envvar=True
)
@_pipeline_option
@_topic_option("Topic to write to")
@click.option(
    "--registry", envvar="TXP_SCHEMA_REGISTRY_URL", default=None, help="Schema registry URL.", show_envvar=True
)
@click.option(
    "--bad-ratio",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of records replaced by labelled bad ones (every kind in turn), to show the DLQ path.",
)
@click.option(
    "--fraud-ratio",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 0.05),
    help="transactions: fraud incidents injected per record (the four scenarios in turn); ground truth in a "
    "txp-fraud-scenario header and the fraud_ground_truth table (TXP_POSTGRES_DSN).",
)
@click.option(
    "--late-ratio",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="transactions: share of records emitted late and out of order (up to --max-lateness behind the stream).",
)
@click.option(
    "--max-lateness",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Longest delay of a late record, in minutes.",
)
@click.option(
    "--delivered-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append `partition offset` of every record Kafka acknowledged, one line each, as the acks arrive.",
)
def produce(
    count: int,
    rate: float,
    seed: int,
    start: datetime | None,
    span_hours: float,
    bootstrap: str | None,
    pipeline: str,
    topic: str | None,
    registry: str | None,
    bad_ratio: float,
    fraud_ratio: float,
    late_ratio: float,
    max_lateness: float,
    delivered_log: Path | None,
) -> None:
    """Produce a pipeline's seeded synthetic records into Kafka (Avro, Confluent wire format).

    `transactions`: card transactions from Faker-built customers and merchants; `crypto_trades`:
    trades from a seeded market simulator. The contract is registered under BACKWARD
    compatibility first; an incompatible schema stops here, before anything is sent.
    """
    from tx_platform.metrics import pushing_producer_metrics
    from tx_platform.producer import open_producer
    from tx_platform.producer import produce as produce_records

    settings = load_settings()
    spec = get_pipeline(pipeline, topic)
    span = timedelta(hours=span_hours)
    first = start.replace(tzinfo=UTC) if start else datetime.now(UTC) - span
    producer, registration = open_producer(
        spec,
        bootstrap or settings.kafka_bootstrap,
        registry or settings.schema_registry_url,
        bad_ratio=bad_ratio,
        seed=seed,
    )
    err.print(f"schema: subject {registration.subject} version {registration.version} (id {registration.schema_id})")
    scenarios: dict[str, Any] = {}
    if fraud_ratio or late_ratio:
        from tx_platform.pipelines.transactions._fraud import scenario_options

        # the incidents' plan (their records' headers) and the generator's options
        scenarios = scenario_options(spec, producer, count, seed, first, span, fraud_ratio, late_ratio, max_lateness)
    records = spec.generate(count, seed, first, span=span, **scenarios)
    columns = (
        TextColumn("[bold]producing"), BarColumn(), MofNCompleteColumn(),
        _RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    # metrics go to the Pushgateway every 5 s and at the end, failed runs included; never in the way
    pipeline = producer.spec.name  # the spec's name, whatever topic it writes to (--topic)
    with (
        pushing_producer_metrics(producer.report, pipeline, settings.pushgateway_url),
        _logging_deliveries(producer.report, delivered_log),
        Progress(*columns, console=err, transient=False) as progress,
    ):
        task = progress.add_task("produce", total=count)
        report = produce_records(
            records,
            producer,
            rate=rate,
            on_progress=lambda n: progress.advance(task, n),
            prepare_in_child=True,  # without --rate: generation and Avro in a second process
        )
    injected = producer.faults.injected_total if producer.faults else 0
    out.print(
        f"delivered {report.delivered} of {report.sent}, failed {report.failed}, "
        f"injected bad {injected} → topic {producer.topic}"
    )
    if fraud_ratio:
        from tx_platform.pipelines.transactions._fraud import record_ground_truth

        out.print(record_ground_truth(settings.dsn(), producer.topic, count, seed, first, span, scenarios))


@contextmanager
def _logging_deliveries(report: DeliveryReport, path: Path | None) -> Iterator[None]:
    """Write ``partition offset`` of each acknowledged record to ``path`` while the block runs.

    Each line reaches the file as its acknowledgement arrives (line-buffered, so a producer killed
    with SIGKILL leaves every line it had seen): a fault test's record of what was reported delivered.
    """
    if path is None:
        yield
        return
    inner = report.observer  # the producer metrics' observer: still told of every report

    with path.open("a", buffering=1) as log:

        def observe(error: Any, msg: Any) -> None:  # noqa: ANN401 - KafkaError | None, Message
            if inner is not None:
                inner(error, msg)
            if error is None:
                log.write(f"{msg.partition()} {msg.offset()}\n")

        report.observer = observe
        try:
            yield
        finally:
            report.observer = inner


# -- metrics -----------------------------------------------------------------------------------
@cli.group()
def metrics() -> None:
    """Pipeline metrics for Prometheus: sink figures from Postgres, Kafka lag, Alertmanager's alerts."""


@metrics.command("serve")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="TXP_METRICS_PORT",
    show_envvar=True,
    default=None,
    help="Port on 127.0.0.1 [default: the stack's metrics port, 9188].",
)
@_state_option
def metrics_serve(port: int | None, state_dir: Path | None) -> None:
    """Serve GET /metrics (read from Postgres and Kafka at each scrape) and POST /alerts until Ctrl+C/SIGTERM.

    Alertmanager's webhook posts to /alerts; each alert is appended to TXP_ALERTS_LOG
    [default: <state dir>/logs/alerts.log] as one JSON line.
    """
    from tx_platform.metrics import serve

    settings = load_settings()
    if port is None:
        port = LocalStack(state_dir or settings.state_dir, settings.jars_dir).layout.metrics_port
    serve(settings, port)


# -- fraud -------------------------------------------------------------------------------------
@cli.group()
def fraud() -> None:
    """Streaming fraud detection: run the query, report it against the injected ground truth."""


@fraud.command("report")
@_topic_option("Only incidents and alerts of this topic")
@click.option("--seed", type=int, default=None, help="Only incidents produced with this seed.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    default=None,
    help="Only incidents produced and alerts detected at or after this UTC time.",
)
def fraud_report_command(topic: str | None, seed: int | None, since: datetime | None) -> None:
    """Per-scenario injected/detected, recall and precision (JSON); exit 1 unless recall = 100%, precision >= 99%."""
    from tx_platform.pipelines.transactions._fraud import fraud_report
    from tx_platform.warehouse import connect

    conn = connect(load_settings().dsn())
    try:
        report = fraud_report(conn, topic=topic, seed=seed, since=since.replace(tzinfo=UTC) if since else None)
    finally:
        conn.close()
    click.echo(json.dumps(report, indent=2))
    if not report["passed"]:
        sys.exit(1)


@fraud.command("run")
@_topic_option("Topic to read")
@click.option(
    "--available-now/--continuous",
    default=False,
    show_default=True,
    help="Process what is there and stop, or run until Ctrl+C.",
)
@click.option("--trigger", default="5 seconds", show_default=True, help="Micro-batch interval when continuous.")
def fraud_run(topic: str | None, available_now: bool, trigger: str) -> None:
    """Run the streaming fraud query in this process (spark-submit spark_jobs/fraud/main.py does the same)."""
    from spark_jobs.fraud.main import run
    from tx_platform.stack import resolve_artifacts

    settings = load_settings()
    jars = [str(j) for j in resolve_artifacts(settings.jars_dir).spark_jars()]
    run(get_pipeline("transactions", topic), settings, jars, available_now=available_now, trigger=trigger)


# -- sink --------------------------------------------------------------------------------------
@cli.command()
@_pipeline_option
@_topic_option("Topic to read")
@click.option(
    "--available-now/--continuous",
    default=False,
    show_default=True,
    help="Process what is there and stop, or run until Ctrl+C.",
)
@click.option("--trigger", default="5 seconds", show_default=True, help="Micro-batch interval when continuous.")
def sink(pipeline: str, topic: str | None, available_now: bool, trigger: str) -> None:
    """Run a pipeline's Spark streaming sink in this process (spark-submit spark_jobs/sink/main.py does the same)."""
    from spark_jobs.sink.main import run
    from tx_platform.stack import resolve_artifacts

    settings = load_settings()
    jars = [str(j) for j in resolve_artifacts(settings.jars_dir).spark_jars()]
    run(get_pipeline(pipeline, topic), settings, jars, available_now=available_now, trigger=trigger)


# -- demo / dev --------------------------------------------------------------------------------
@cli.command()
@click.option("--count", "-n", default=10_000, show_default=True, type=click.IntRange(min=1), help="Card transactions.")
@click.option(
    "--crypto-count",
    default=3_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Crypto trades, over 20 minutes ending 3 minutes ago (every symbol trades each minute from 126 on).",
)
@click.option("--seed", "-s", default=42, show_default=True)
@click.option("--reset/--no-reset", default=True, show_default=True, help="Start from empty topics and tables.")
@click.option(
    "--bad-ratio", default=0.01, show_default=True, type=click.FloatRange(0, 1), help="Share of injected bad records."
)
@_state_option
def demo(count: int, crypto_count: int, seed: int, reset: bool, bad_ratio: float, state_dir: Path | None) -> None:
    """Headless end to end, every pipeline: stack up, produce, materialize every asset, run every check.

    The last line printed is one JSON object; exit status 1 if a check failed or counts disagree.
    """
    from tx_platform.demo import run_demo, summary_json

    summary = run_demo(
        _stack(state_dir),
        counts={"transactions": count, "crypto_trades": crypto_count},
        seed=seed,
        reset=reset,
        bad_ratio=bad_ratio,
        log=lambda m: err.print(f"[dim]demo[/] {m}"),
    )
    click.echo(summary_json(summary))
    if not summary.ok:
        sys.exit(1)


@cli.command()
@click.option("--port", default=3000, show_default=True, envvar="TXP_DAGSTER_PORT", show_envvar=True)
@_state_option
def dev(port: int, state_dir: Path | None) -> None:
    """Start the local stack, then `dagster dev` on http://127.0.0.1:PORT (Ctrl+C stops Dagster only)."""
    s = _stack(state_dir)
    with err.status("starting the local stack…"):
        s.up()
    _print_status(s)
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or shutil.which("dagster")
    if dagster is None:
        msg = "dagster is not installed in this environment — run `make setup`"
        raise click.ClickException(msg)
    if s.dagster.pid() is not None:
        msg = f"dagster dev is already running (pid {s.dagster.pid()}) — open http://127.0.0.1:{port}"
        raise click.ClickException(msg)
    env = {**os.environ, **s.env()}
    argv = [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    out.print(f"Dagster UI: [bold]http://127.0.0.1:{port}[/]  (Ctrl+C stops Dagster; `make down` stops everything)")
    # Its own process group, so `txp stack down` can stop it and all its children; SIGINT restored
    # to the default because a shell's background job inherits it ignored, and dagster dev shuts
    # down cleanly on SIGINT only. Ctrl+C here is forwarded; a second one kills it.
    child = subprocess.Popen(  # noqa: S603 - our own argv
        argv, env=env, start_new_session=True, preexec_fn=_default_sigint
    )
    s.dagster.pid_file.write_text(str(child.pid))
    interrupts = 0

    def _forward(_signum: int, _frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            err.print("stopping Dagster… (Ctrl+C again to kill it)")
            os.killpg(child.pid, signal.SIGINT)
        else:
            os.killpg(child.pid, signal.SIGKILL)

    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGTERM, _forward)
    try:
        code = child.wait()
    finally:
        s.dagster.pid_file.unlink(missing_ok=True)
    sys.exit(code)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main() -> None:
    """Console-script entry point: domain errors print without a traceback."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("[red]aborted[/]")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TxPlatformError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(1)
