"""Shared fixtures: one real local stack per test session, Spark session, helpers.

The stack runs under ``.txp-test/`` on its own ports (Kafka 19092/19093, Postgres 15433), so the
suite can run while a development stack (`make up`) is up. Set TXP_TEST_STACK=existing to use the
stack that TXP_* variables already point at instead of starting one (no start, no stop).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tx_platform.config import PROJECT_ROOT, Settings, load_settings
from tx_platform.pipelines import TRANSACTIONS, PipelineSpec

#: TXP_TEST_STATE_DIR (with the TXP_TEST_*_PORT variables) lets two suites run side by side.
TEST_STATE_DIR = Path(os.environ.get("TXP_TEST_STATE_DIR") or PROJECT_ROOT / ".txp-test")


def assert_eventually(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def produce_records(
    spec: PipelineSpec, settings: Settings, count: int, seed: int, hours_ago: float = 2.0, bad_ratio: float = 0.0
) -> Any:  # noqa: ANN401 - the RecordProducer, for its figures
    """Produce ``count`` records of ``spec``'s generator to ``spec.topic``, all delivered.

    The seed is mixed with the topic name: the same seed in two tests of one session (or of two
    sessions on a reused stack) would give the same record ids, and the second test's records
    would be quarantined as duplicates.
    """
    from datetime import UTC, datetime, timedelta

    from tx_platform.producer import open_producer, produce

    producer, _ = open_producer(
        spec, settings.kafka_bootstrap, settings.schema_registry_url, bad_ratio=bad_ratio, seed=seed
    )
    mixed = seed * 1_000_003 + zlib.crc32(spec.topic.encode())
    start = datetime.now(UTC) - timedelta(hours=hours_ago)
    records = spec.generate(count, mixed, start, span=timedelta(hours=hours_ago / 2))
    report = produce(records, producer)
    assert report.delivered == count, report
    return producer


def fetch_all(dsn: str, query: str, *params: object) -> list[tuple]:
    """Every row of ``query`` on the warehouse at ``dsn``."""
    from tx_platform.warehouse import connect

    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def fetch_one(dsn: str, query: str, *params: object) -> Any:  # noqa: ANN401 - a row, or None
    """The first row of ``query`` on the warehouse at ``dsn``."""
    rows = fetch_all(dsn, query, *params)
    return rows[0] if rows else None


def spark_jars() -> list[str]:
    """The connector jars from the Maven cache (resolved at the edge, as the CLI does)."""
    from tx_platform.stack import resolve_artifacts

    return [str(j) for j in resolve_artifacts(load_settings().jars_dir).spark_jars()]


def start_continuous_sink(spec: PipelineSpec, settings: Settings, log: Path, **env: str) -> subprocess.Popen:
    """`spark_jobs/sink/main.py --trigger "1 second"` for ``spec`` (a shipped pipeline, maybe on another
    topic), output into ``log``."""
    variables = {**os.environ, "TXP_CHECKPOINT_DIR": str(settings.checkpoint_root), **env}
    command = [
        sys.executable, str(PROJECT_ROOT / "spark_jobs" / "sink" / "main.py"), "--trigger", "1 second",
        "--pipeline", spec.name, "--topic", spec.topic, "--jars", ",".join(spark_jars()),
    ]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(  # noqa: S603 - our own entry point
            command,
            env=variables,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (local address in hex as in /proc/net/tcp, port) of every listening TCP socket."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, state, inode = fields[1], fields[3], fields[9]
            if state == "0A":
                host, port = address.rsplit(":", 1)
                found[inode] = (host, int(port, 16))
    return found


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds open (empty when it is gone)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) listening on ``port``."""
    return {host for host, p in listening_sockets().values() if p == port}


def process_group(pgid: int) -> list[tuple[int, list[str]]]:
    """The live processes of process group ``pgid`` with their argv (a zombie is gone, only not yet reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except (OSError, IndexError):
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":
            found.append((int(entry.name), argv))
    return found


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """Start the test stack once (or use an existing one); export its TXP_* settings to the process."""
    if os.environ.get("TXP_TEST_STACK") == "existing":
        yield {k: v for k, v in os.environ.items() if k.startswith("TXP_")}
        return
    from tx_platform.stack import LocalStack, StackLayout

    layout = StackLayout(
        kafka_port=int(os.environ.get("TXP_TEST_KAFKA_PORT", "19092")),
        controller_port=int(os.environ.get("TXP_TEST_CONTROLLER_PORT", "19093")),
        postgres_port=int(os.environ.get("TXP_TEST_POSTGRES_PORT", "15433")),
        registry_port=int(os.environ.get("TXP_TEST_REGISTRY_PORT", "18081")),
        prometheus_port=int(os.environ.get("TXP_TEST_PROMETHEUS_PORT", "19090")),
        alertmanager_port=int(os.environ.get("TXP_TEST_ALERTMANAGER_PORT", "19095")),
        pushgateway_port=int(os.environ.get("TXP_TEST_PUSHGATEWAY_PORT", "19091")),
        postgres_exporter_port=int(os.environ.get("TXP_TEST_POSTGRES_EXPORTER_PORT", "19187")),
        metrics_port=int(os.environ.get("TXP_TEST_METRICS_PORT", "19188")),
        jmx_port=int(os.environ.get("TXP_TEST_JMX_PORT", "19404")),
    )
    stack = LocalStack(TEST_STATE_DIR, load_settings().jars_dir)
    stack.down(purge=True)  # every session starts from nothing
    stack = LocalStack(TEST_STATE_DIR, load_settings().jars_dir, layout)
    try:
        stack.up()
    except Exception:
        for log in sorted(stack.logs_dir.glob("*.log")):
            print(f"==== {log}\n{log.read_text(errors='replace')[-4000:]}")  # noqa: T201 - shown on failure
        stack.down()
        raise
    env = stack.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stack.down()


@pytest.fixture(scope="session")
def test_stack(stack_env: dict[str, str]):  # noqa: ANN201 - LocalStack
    """The LocalStack object of the session's stack."""
    from tx_platform.stack import LocalStack

    return LocalStack(Path(stack_env["TXP_STATE_DIR"]), load_settings().jars_dir)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names and checkpoints of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(stack_env: dict[str, str], tmp_path: Path) -> Settings:
    """Settings for one test: the session's stack and its own checkpoint directory."""
    return load_settings(checkpoint_dir=tmp_path / "checkpoints")


@pytest.fixture
def spec(unique: str) -> PipelineSpec:
    """The transactions pipeline on a topic of this test's own (``tx_<unique>``, DLQ ``tx_<unique>.dlq``)."""
    return TRANSACTIONS.with_topic(f"tx_{unique}")


@pytest.fixture(scope="session")
def spark(stack_env: dict[str, str]):  # noqa: ANN201 - SparkSession
    """One Spark session for the test session, configured like production."""
    from pyspark.sql import SparkSession

    from spark_jobs.session import spark_config

    builder = SparkSession.builder
    for key, value in spark_config(load_settings(), spark_jars(), app_name="tx_platform_tests").items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def create_topic(stack_env: dict[str, str]) -> Callable[[str], None]:
    """Create a topic of 3 partitions on the session's stack."""
    from tx_platform.resources import KafkaResource

    def _create(name: str, partitions: int = 3) -> None:
        KafkaResource(bootstrap_servers=stack_env["TXP_KAFKA_BOOTSTRAP"]).ensure_topic(name, partitions, 1)

    return _create
