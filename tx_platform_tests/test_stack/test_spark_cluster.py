"""`txp stack up --spark-workers 2`: a Spark standalone master and two workers on 127.0.0.1 run the real sink.

A stack of its own (a temporary state directory, free ports), so the session's stack keeps its
``local[*]``; the sink runs as ``spark_jobs/sink/main.py`` in a subprocess, so its SparkSession (on
the cluster) never meets the session's ``spark`` fixture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tx_platform.config import PROJECT_ROOT, load_settings
from tx_platform.kafka_admin import ensure_topic
from tx_platform.pipelines import TRANSACTIONS
from tx_platform.stack import LocalStack, StackLayout, free_port_block
from tx_platform_tests.conftest import fetch_one, listening_sockets, produce_records, socket_inodes, spark_jars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 2_000
PARTITIONS = 4
LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def _layout() -> StackLayout:
    base = free_port_block(16)
    names = (
        "kafka_port", "controller_port", "postgres_port", "registry_port", "prometheus_port", "alertmanager_port",
        "pushgateway_port", "postgres_exporter_port", "metrics_port", "jmx_port", "spark_master_port",
        "spark_master_ui_port", "spark_worker_ui_port",
    )  # fmt: skip
    # the worker UIs take spark_worker_ui_port and the next port: it is last
    ports: dict[str, Any] = {name: base + i for i, name in enumerate(names)}
    return StackLayout(spark_workers=2, **ports)


def _listening_addresses_of(pid: int) -> dict[int, str]:
    """Port -> hex address of every listening TCP socket of process ``pid``."""
    inodes = socket_inodes(pid)
    return {port: host for inode, (host, port) in listening_sockets().items() if inode in inodes}


def _processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes containing any of ``needles``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(n in cmdline for n in needles):
            found.append(cmdline)
    return found


def test_the_sink_runs_on_a_two_worker_standalone_cluster(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    jars_dir = load_settings().jars_dir
    stack = LocalStack(state, jars_dir, _layout())
    master = stack.spark_master
    try:
        stack.up()
        env = stack.env()
        assert env["TXP_SPARK_MASTER"] == f"spark://127.0.0.1:{stack.layout.spark_master_port}"
        assert f"TXP_SPARK_MASTER={master.url}" in (state / "stack.env").read_text().splitlines()

        # status lists the master and both workers running; every socket they listen on is 127.0.0.1
        rows = {row.name: row for row in stack.status() if row.name.startswith("spark-")}
        assert sorted(rows) == ["spark-master", "spark-worker-1", "spark-worker-2"]
        assert all(row.running for row in rows.values())
        spark_ports = {p for row in rows.values() for p in row.ports}
        assert spark_ports == {master.port, master.ui_port, *(w.ui_port for w in stack.spark_workers())}
        for row in rows.values():
            assert row.pid is not None
            listening = _listening_addresses_of(row.pid)
            assert set(row.ports) <= set(listening), (row.name, listening)
            # the RPC ports chosen at random too (the workers'), and no REST server on 6066
            assert set(listening.values()) == {LOOPBACK}, f"{row.name} must bind 127.0.0.1 only: {listening}"
        assert master.alive_workers() == {w.ui_port for w in stack.spark_workers()}
        alive = [w for w in master.state()["workers"] if w["state"] == "ALIVE"]
        assert [(w["cores"], w["memory"]) for w in alive] == [(1, 2048), (1, 2048)]

        # the real sink, on the cluster: spark_jobs/sink/main.py as a driver of its own
        settings = load_settings(
            kafka_bootstrap=env["TXP_KAFKA_BOOTSTRAP"],
            schema_registry_url=env["TXP_SCHEMA_REGISTRY_URL"],
            postgres_dsn=env["TXP_POSTGRES_DSN"],
            checkpoint_dir=tmp_path / "checkpoints",
        )
        spec = TRANSACTIONS.with_topic("tx_cluster")
        ensure_topic(settings.kafka_bootstrap, spec.topic, PARTITIONS, 1)
        produce_records(spec, settings, RECORDS, seed=31)
        command = [
            sys.executable, str(PROJECT_ROOT / "spark_jobs" / "sink" / "main.py"), "--available-now",
            "--pipeline", spec.name, "--topic", spec.topic, "--jars", ",".join(spark_jars()),
        ]  # fmt: skip
        variables = {**os.environ, **env, "TXP_CHECKPOINT_DIR": str(settings.checkpoint_root)}
        sink = subprocess.run(  # noqa: S603 - our own entry point
            command, env=variables, capture_output=True, text=True, timeout=600, check=False
        )
        assert sink.returncode == 0, sink.stdout[-3000:] + sink.stderr[-5000:]
        rows_written = fetch_one(
            settings.dsn(),
            f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s",
            spec.topic,  # noqa: S608
        )[0]
        assert rows_written == RECORDS

        # the master ran exactly one application, with a core from each worker
        apps = master.state()
        assert apps["activeapps"] == []
        [app] = apps["completedapps"]
        assert (app["name"], app["state"], app["cores"]) == ("tx_platform_sink", "FINISHED", 2)
        # each worker launched one executor of that application; the executors' own logs say what ran there
        tasks = {}
        for worker in stack.spark_workers():
            executors = list((worker.root / app["id"]).iterdir())
            assert len(executors) == 1, executors
            stderr = (executors[0] / "stderr").read_text(errors="replace")
            tasks[worker.name] = len(re.findall(r"Executor: Finished task", stderr))
        print(f"cluster sink: {RECORDS} rows, app {app['id']}, tasks per executor {tasks}")  # noqa: T201
        assert all(n > 0 for n in tasks.values()), f"both workers' executors must run tasks: {tasks}"
    finally:
        stopped = stack.down()
        try:
            assert {"spark-master", "spark-worker-1", "spark-worker-2"} <= set(stopped)
            left = _processes_mentioning(master.url, f"127.0.0.1:{master.port}", str(state))
            assert left == [], f"processes of the Spark cluster are still running: {left}"
        finally:
            LocalStack(state, jars_dir).down(purge=True)
    assert not state.exists()
