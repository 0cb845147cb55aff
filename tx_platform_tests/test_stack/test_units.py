import socket
from pathlib import Path

import pytest

from tx_platform.errors import StackError
from tx_platform.stack import ManagedProcess, port_in_use, tail
from tx_platform.stack._artifacts import _artifact_name
from tx_platform.stack._kafka import new_cluster_id
from tx_platform.stack._launcher import LocalStack, StackLayout

pytestmark = pytest.mark.unit


def test_artifact_names_drop_versions() -> None:
    assert _artifact_name("kafka-clients-3.9.1.jar") == "kafka-clients"
    assert _artifact_name("spark-sql-kafka-0-10_2.13-4.1.1.jar") == "spark-sql-kafka-0-10_2.13"
    assert _artifact_name("scala-library-2.13.15.jar") == "scala-library"
    assert _artifact_name("zstd-jni-1.5.6-10.jar") == "zstd-jni"


def test_cluster_id_is_kafka_uuid_form() -> None:
    ids = {new_cluster_id() for _ in range(2_000)}  # about 31 would start with "-" if not redrawn
    assert len(ids) == 2_000 and all(len(i) == 22 and "=" not in i and not i.startswith("-") for i in ids)


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_managed_process_start_ready_stop(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path / "pid", tmp_path / "log", marker="txp-sleeper-marker")
    pid = proc.start(["bash", "-c", "echo hello; exec -a txp-sleeper-marker sleep 60"])
    assert proc.pid() == pid
    proc.wait_ready(lambda: "hello" in tail(tmp_path / "log"), timeout=10, what="greeting")
    assert proc.stop(timeout=5)
    assert proc.pid() is None and not (tmp_path / "pid").exists()
    assert not proc.stop()  # stopping twice is harmless


def test_dead_process_reports_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess("crasher", tmp_path / "pid", tmp_path / "log", marker="txp-crasher")
    proc.start(["bash", "-c", "echo 'boom: bad config' >&2; sleep 0.5; exit 3", "txp-crasher"])
    with pytest.raises(StackError, match=r"(?s)crasher exited during start-up.*boom: bad config"):
        proc.wait_ready(lambda: False, timeout=10, what="never")


def test_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pid").write_text("1")  # pid 1 exists but is not ours
    proc = ManagedProcess("x", tmp_path / "pid", tmp_path / "log", marker="txp-not-init")
    assert proc.pid() is None


def test_multi_node_layout_splits_controllers_and_brokers(tmp_path: Path) -> None:
    stack = LocalStack(
        tmp_path, tmp_path / "jars", StackLayout(kafka_port=29092, controller_port=29093, brokers=3, controllers=3)
    )
    nodes = stack.kafka_nodes()
    assert [n.roles for n in nodes] == ["controller"] * 3 + ["broker"] * 3
    assert stack.bootstrap == "127.0.0.1:29092,127.0.0.1:29192,127.0.0.1:29292"
    assert stack.env()["TXP_TOPIC_REPLICATION"] == "3"
    config = nodes[3].render_config(stack._voters(), replication=3).read_text()
    assert "controller.quorum.voters=1@127.0.0.1:29093,2@127.0.0.1:29193,3@127.0.0.1:29293" in config
    assert "min.insync.replicas=2" in config and "listeners=PLAINTEXT://127.0.0.1:29092" in config


def test_layout_is_fixed_once_the_state_dir_exists(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, tmp_path / "jars", StackLayout(postgres_port=25433))
    stack._persist()
    assert LocalStack(tmp_path, tmp_path / "jars").layout.postgres_port == 25433
    with pytest.raises(StackError, match="down --purge"):
        LocalStack(tmp_path, tmp_path / "jars", StackLayout(postgres_port=25434))


def test_env_lines_are_shell_quoted(tmp_path: Path) -> None:
    lines = LocalStack(tmp_path, tmp_path / "jars").export_lines().splitlines()
    assert all(line.startswith("export TXP_") or line.startswith("export DAGSTER_HOME=") for line in lines)
    names = {line.split("=", 1)[0].removeprefix("export ") for line in lines}
    assert {
        "TXP_KAFKA_BOOTSTRAP",
        "TXP_SCHEMA_REGISTRY_URL",
        "TXP_POSTGRES_DSN",
        "TXP_SPARK_MASTER",
        "TXP_PROMETHEUS_URL",
    } <= names


def test_no_spark_cluster_by_default(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, tmp_path / "jars")
    assert stack.spark_workers() == []
    assert stack.env()["TXP_SPARK_MASTER"] == "local[*]"
    assert not any(row.name.startswith("spark-") for row in stack.status())


def test_spark_workers_get_their_own_ui_ports_and_work_dirs(tmp_path: Path) -> None:
    layout = StackLayout(
        spark_workers=3, spark_master_port=27077, spark_master_ui_port=28090, spark_worker_ui_port=28091
    )
    stack = LocalStack(tmp_path, tmp_path / "jars", layout)
    assert stack.env()["TXP_SPARK_MASTER"] == "spark://127.0.0.1:27077"
    workers = stack.spark_workers()
    assert [w.ui_port for w in workers] == [28091, 28092, 28093]
    assert [w.root for w in workers] == [tmp_path / "spark" / f"worker-{n}" for n in (1, 2, 3)]
    assert {(w.cores, w.memory, w.master_url) for w in workers} == {(1, "2g", "spark://127.0.0.1:27077")}
    # down: master and workers are listed (stopped) by `txp stack status`
    rows = {row.name: row for row in stack.status() if row.name.startswith("spark-")}
    assert sorted(rows) == ["spark-master", "spark-worker-1", "spark-worker-2", "spark-worker-3"]
    assert rows["spark-master"].ports == (27077, 28090) and not rows["spark-master"].running


def test_spark_workers_can_change_on_an_existing_stack(tmp_path: Path) -> None:
    LocalStack(tmp_path, tmp_path / "jars", StackLayout(postgres_port=25433))._persist()
    resized = LocalStack(tmp_path, tmp_path / "jars", StackLayout(postgres_port=25433, spark_workers=2))
    assert resized.layout.spark_workers == 2
    assert resized.layout.cluster_id == LocalStack(tmp_path, tmp_path / "jars").layout.cluster_id
    with pytest.raises(StackError, match="down --purge"):
        LocalStack(tmp_path, tmp_path / "jars", StackLayout(postgres_port=25433, spark_master_port=27078))


def test_spark_config_keeps_the_driver_on_loopback_for_the_local_master() -> None:
    from spark_jobs.session import spark_config
    from tx_platform.config import load_settings

    local_cluster = spark_config(load_settings(spark_master="spark://127.0.0.1:7077"), ["/jars/a.jar"])
    assert local_cluster["spark.driver.host"] == local_cluster["spark.driver.bindAddress"] == "127.0.0.1"
    assert local_cluster["spark.jars"] == "/jars/a.jar"
    remote = spark_config(load_settings(spark_master="spark://spark-master:7077"), [])
    assert "spark.driver.host" not in remote
