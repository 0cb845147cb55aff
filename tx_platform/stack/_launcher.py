"""The local stack: Kafka (KRaft) and PostgreSQL as child processes under one state directory.

Monitoring (Prometheus, Alertmanager, Pushgateway, postgres_exporter) joins them when the system
has the binaries; see ``_monitoring``.
"""

from __future__ import annotations

import json
import secrets
import shlex
import signal
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from tx_platform.config import STACK_ENV_FILE
from tx_platform.errors import StackError
from tx_platform.metrics import MetricsExporterService
from tx_platform.pipelines import PIPELINES
from tx_platform.stack._artifacts import Artifacts, resolve_artifacts
from tx_platform.stack._kafka import KafkaNode, broker_ready, new_cluster_id
from tx_platform.stack._monitoring import (
    MonitoringService,
    alertmanager_service,
    local_targets,
    postgres_exporter_service,
    prometheus_service,
    pushgateway_service,
    write_alertmanager_config,
    write_prometheus_files,
)
from tx_platform.stack._postgres import (
    ANALYST_ROLE,
    DAGSTER_DB,
    DAGSTER_ROLE,
    MONITOR_ROLE,
    OWNER_ROLE,
    PIPELINE_ROLE,
    REGISTRY_DB,
    REGISTRY_ROLE,
    SUPERUSER,
    WAREHOUSE_DB,
    PostgresService,
)
from tx_platform.stack._process import ManagedProcess
from tx_platform.stack._registry import RegistryService
from tx_platform.stack._spark import SparkMaster, SparkWorker, worker_processes
from tx_platform.warehouse import migrate

_LAYOUT_FILE = "stack.json"
_SECRETS_FILE = "secrets.json"
#: Layout fields `txp stack up` may change on an existing stack (the Spark cluster keeps no data).
_RESIZABLE = ("cluster_id", "spark_workers")

DAGSTER_YAML = """\
# Dagster instance of the local stack (written by `txp stack up`): runs, events and schedules
# live in PostgreSQL through dagster-postgres, in the stack's own `dagster` database.
storage:
  postgres:
    postgres_url:
      env: TXP_DAGSTER_PG_URL
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 2
  # one sink run per pipeline at a time, whoever launches it: each pool (the sinks' `sink_<pipeline>`) has one
  # slot; `op` granularity so that runs executed in-process (`dagster asset materialize`) wait for it too
  pools:
    default_limit: 1
    granularity: op
# the sink's and the fraud query's own log lines (each micro-batch, a wait for a lease) in the run's log (DEBUG:
# the level of the loggers it manages, Dagster's own included, whose events are DEBUG)
python_logs:
  managed_python_loggers: [tx_platform, spark_jobs]
  python_log_level: DEBUG
telemetry:
  enabled: false
"""


@dataclass(frozen=True)
class StackLayout:
    """Ports and topology of a local stack; fixed when the state directory is first used."""

    kafka_port: int = 9092
    controller_port: int = 9093
    postgres_port: int = 5433
    registry_port: int = 8081
    brokers: int = 1
    controllers: int = 1
    cluster_id: str = field(default_factory=new_cluster_id)
    # monitoring (9093 is the KRaft controller, so Alertmanager moves to 9095)
    prometheus_port: int = 9090
    alertmanager_port: int = 9095
    pushgateway_port: int = 9091
    postgres_exporter_port: int = 9187
    metrics_port: int = 9188  # the pipeline metrics exporter (txp metrics serve)
    jmx_port: int = 9404  # Kafka node n exports JMX metrics on jmx_port + n - 1
    # the Spark standalone cluster (none by default: sinks run local[*]); 8080 is Kafka UI in Compose
    spark_workers: int = 0
    spark_master_port: int = 7077
    spark_master_ui_port: int = 8090
    spark_worker_ui_port: int = 8091  # worker n serves its UI on spark_worker_ui_port + n - 1
    spark_worker_cores: int = 1
    spark_worker_memory: str = "2g"

    @property
    def combined(self) -> bool:
        """One node that is both controller and broker (the default laptop topology)."""
        return self.brokers == 1 and self.controllers == 1


@dataclass(frozen=True)
class ServiceStatus:
    """One line of `txp stack status`."""

    name: str
    running: bool
    pid: int | None
    ports: tuple[int, ...]
    log_file: Path
    #: set for an optional service whose binary is missing: the Debian package that provides it
    not_installed: str | None = None


class LocalStack:
    """Start, stop and inspect the local stack kept under ``state_dir``."""

    def __init__(self, state_dir: Path, jars_dir: Path, layout: StackLayout | None = None) -> None:
        self.state_dir = state_dir
        self.jars_dir = jars_dir
        self.layout = self._load_layout(layout)
        self.passwords = self._load_secrets()

    # -- state --------------------------------------------------------------------------------
    def _load_layout(self, requested: StackLayout | None) -> StackLayout:
        path = self.state_dir / _LAYOUT_FILE
        if path.exists():
            stored = StackLayout(**json.loads(path.read_text()))
            fixed = tuple(f for f in asdict(stored) if f not in _RESIZABLE)
            if requested is not None and any(getattr(requested, f) != getattr(stored, f) for f in fixed):
                msg = (
                    f"the stack in {self.state_dir} was created with {stored}; to change ports or topology "
                    "run `txp stack down --purge` first, or use another --state-dir"
                )
                raise StackError(msg)
            if requested is not None:
                # `txp stack up --spark-workers N` resizes the Spark cluster of an existing stack
                return replace(stored, spark_workers=requested.spark_workers)
            return stored
        return requested or StackLayout()

    def _load_secrets(self) -> dict[str, str]:
        roles = (SUPERUSER, OWNER_ROLE, PIPELINE_ROLE, ANALYST_ROLE, DAGSTER_ROLE, REGISTRY_ROLE, MONITOR_ROLE)
        stored: dict[str, str] = {}
        path = self.state_dir / _SECRETS_FILE
        if path.exists():
            stored = dict(json.loads(path.read_text()))
        # roles added in later versions get a password too
        return {role: stored.get(role) or secrets.token_urlsafe(18) for role in roles}

    def _persist(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / _LAYOUT_FILE).write_text(json.dumps(asdict(self.layout), indent=2))
        secrets_path = self.state_dir / _SECRETS_FILE
        secrets_path.write_text(json.dumps(self.passwords, indent=2))
        secrets_path.chmod(0o600)

    # -- services -----------------------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def postgres(self) -> PostgresService:
        return PostgresService(
            root=self.state_dir / "postgres",
            port=self.layout.postgres_port,
            log_file=self.logs_dir / "postgres.log",
            passwords=self.passwords,
        )

    @property
    def registry(self) -> RegistryService:
        return RegistryService(
            root=self.state_dir / "registry",
            port=self.layout.registry_port,
            log_file=self.logs_dir / "schema-registry.log",
            jdbc_url=f"jdbc:postgresql://127.0.0.1:{self.layout.postgres_port}/{REGISTRY_DB}",
            username=REGISTRY_ROLE,
            password=self.passwords[REGISTRY_ROLE],
        )

    def kafka_nodes(self) -> list[KafkaNode]:
        """Nodes 1..controllers are controllers; brokers follow (or node 1 does both)."""
        layout = self.layout
        if layout.combined:
            return [
                KafkaNode(
                    1,
                    self.state_dir / "kafka-1",
                    self.logs_dir / "kafka-1.log",
                    layout.kafka_port,
                    layout.controller_port,
                    layout.jmx_port,
                )
            ]
        nodes = [
            KafkaNode(
                i + 1,
                self.state_dir / f"kafka-{i + 1}",
                self.logs_dir / f"kafka-{i + 1}.log",
                None,
                layout.controller_port + 100 * i,
                layout.jmx_port + i,
            )
            for i in range(layout.controllers)
        ]
        for b in range(layout.brokers):
            node_id = layout.controllers + b + 1
            nodes.append(
                KafkaNode(
                    node_id,
                    self.state_dir / f"kafka-{node_id}",
                    self.logs_dir / f"kafka-{node_id}.log",
                    layout.kafka_port + 100 * b,
                    None,
                    layout.jmx_port + node_id - 1,
                )
            )
        return nodes

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers of the running cluster."""
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.kafka_nodes() if n.broker_port)

    def _voters(self) -> str:
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.kafka_nodes() if n.controller_port)

    @property
    def prometheus(self) -> MonitoringService:
        root = self.state_dir / "prometheus"
        return prometheus_service(
            root, self.layout.prometheus_port, self.logs_dir / "prometheus.log", root / "prometheus.yml"
        )

    @property
    def alertmanager(self) -> MonitoringService:
        root = self.state_dir / "alertmanager"
        return alertmanager_service(
            root, self.layout.alertmanager_port, self.logs_dir / "alertmanager.log", root / "alertmanager.yml"
        )

    @property
    def pushgateway(self) -> MonitoringService:
        return pushgateway_service(
            self.state_dir / "pushgateway", self.layout.pushgateway_port, self.logs_dir / "pushgateway.log"
        )

    @property
    def postgres_exporter(self) -> MonitoringService:
        # lib/pq (the exporter's driver) asks for TLS unless told not to; the server has none
        dsn = self.postgres.dsn(MONITOR_ROLE, "postgres") + "?sslmode=disable"
        return postgres_exporter_service(
            self.state_dir / "postgres-exporter",
            self.layout.postgres_exporter_port,
            self.logs_dir / "postgres-exporter.log",
            dsn,
        )

    def monitoring(self) -> list[MonitoringService]:
        """The optional monitoring services, in start order (Prometheus last: it scrapes the others)."""
        return [self.postgres_exporter, self.pushgateway, self.alertmanager, self.prometheus]

    def _write_monitoring_config(self) -> None:
        layout = self.layout
        targets = local_targets(
            prometheus_port=layout.prometheus_port,
            alertmanager_port=layout.alertmanager_port,
            pushgateway_port=layout.pushgateway_port,
            postgres_exporter_port=layout.postgres_exporter_port,
            registry_port=layout.registry_port,
            metrics_port=layout.metrics_port,
            kafka_nodes=self.kafka_nodes(),
        )
        write_prometheus_files(self.prometheus.root, targets)
        write_alertmanager_config(self.alertmanager.root, layout.metrics_port)

    def _start_monitoring(self, timeout: float) -> None:
        """Start the installed monitoring services and wait until each is ready; reload running ones."""
        self._write_monitoring_config()
        started = []
        for service in self.monitoring():
            running = service.process.pid() is not None
            if service.start():
                started.append(service)
                if running:
                    service.reload()  # the configuration was just rewritten
        for service in started:
            service.process.wait_ready(service.ready, timeout, f"{service.name} answering on {service.url}")

    @property
    def spark_master(self) -> SparkMaster:
        return SparkMaster(
            root=self.state_dir / "spark",
            port=self.layout.spark_master_port,
            ui_port=self.layout.spark_master_ui_port,
            log_file=self.logs_dir / "spark-master.log",
        )

    def spark_workers(self) -> list[SparkWorker]:
        """The layout's Spark workers, 1..spark_workers (none by default)."""
        layout = self.layout
        return [
            SparkWorker(
                number=n,
                root=self.state_dir / "spark" / f"worker-{n}",
                master_url=self.spark_master.url,
                ui_port=layout.spark_worker_ui_port + n - 1,
                cores=layout.spark_worker_cores,
                memory=layout.spark_worker_memory,
                log_file=self.logs_dir / f"spark-worker-{n}.log",
            )
            for n in range(1, layout.spark_workers + 1)
        ]

    def _start_spark(self) -> None:
        """Launch the master and workers (no wait); stop the master and workers the layout no longer has."""
        wanted = {w.process.pid_file for w in self.spark_workers()}
        for process in worker_processes(self.spark_master.root):
            if process.pid_file not in wanted:
                process.stop(timeout=30)
        if not self.layout.spark_workers:
            self.spark_master.process.stop(timeout=30)
            return
        self.spark_master.start()
        for worker in self.spark_workers():
            worker.start()

    def _wait_spark(self, timeout: float) -> None:
        """Wait until every worker is registered with the master and ALIVE in its ``/json/``."""
        master = self.spark_master
        if self.layout.spark_workers:
            master.process.wait_ready(master.ready, timeout, f"master UI on {master.ui_url}")
        for worker in self.spark_workers():
            worker.process.wait_ready(
                partial(master.has_worker, worker.ui_port),
                timeout,
                f"{worker.name} ALIVE in {master.ui_url}/json/",
            )

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster_home"

    @property
    def dagster(self) -> ManagedProcess:
        """`dagster dev` when started by `txp dev` (it shuts down cleanly on SIGINT only)."""
        return ManagedProcess(
            name="dagster",
            pid_file=self.state_dir / "dagster.pid",
            log_file=self.logs_dir / "dagster.log",
            marker="dagster dev",
            stop_signal=signal.SIGINT,
        )

    def env(self) -> dict[str, str]:
        """Connection settings of this stack as TXP_* variables."""
        replication = min(3, self.layout.brokers)
        return {
            "TXP_KAFKA_BOOTSTRAP": self.bootstrap,
            "TXP_SCHEMA_REGISTRY_URL": self.registry.url,
            "TXP_POSTGRES_DSN": self.postgres.dsn(PIPELINE_ROLE, WAREHOUSE_DB),
            "TXP_ANALYST_DSN": self.postgres.dsn(ANALYST_ROLE, WAREHOUSE_DB),
            # the schema's owner: `txp db migrate` runs as it (the pipeline role creates nothing)
            "TXP_OWNER_DSN": self.postgres.dsn(OWNER_ROLE, WAREHOUSE_DB),
            "TXP_SPARK_MASTER": self.spark_master.url if self.layout.spark_workers else "local[*]",
            "TXP_PROMETHEUS_URL": f"http://127.0.0.1:{self.layout.prometheus_port}",
            "TXP_ALERTMANAGER_URL": f"http://127.0.0.1:{self.layout.alertmanager_port}",
            "TXP_PUSHGATEWAY_URL": f"http://127.0.0.1:{self.layout.pushgateway_port}",
            "TXP_TOPIC_REPLICATION": str(replication),
            "TXP_STATE_DIR": str(self.state_dir),
            # explicit driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which we do not ship
            "TXP_DAGSTER_PG_URL": self.postgres.dsn(DAGSTER_ROLE, DAGSTER_DB).replace(
                "postgresql://", "postgresql+psycopg2://", 1
            ),
            "DAGSTER_HOME": str(self.dagster_home),
        }

    def export_lines(self) -> str:
        """`export NAME=value` lines for `eval "$(txp stack env)"`."""
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in self.env().items())

    # -- lifecycle ----------------------------------------------------------------------------
    def up(self, timeout: float = 90.0) -> Artifacts:
        """Start every service that is not running; wait until each is ready. Idempotent."""
        artifacts = resolve_artifacts(self.jars_dir)
        self._persist()
        self.postgres.start(timeout=timeout)
        nodes = self.kafka_nodes()
        replication = min(3, self.layout.brokers)
        for node in nodes:
            node.start(artifacts, self._voters(), replication, self.layout.cluster_id)
        registry = self.registry
        registry.start(artifacts)
        self._start_spark()  # its JVMs start while Kafka's do
        brokers = [n for n in nodes if n.broker_port]
        bootstrap = self.bootstrap
        for node in brokers:
            node.process.wait_ready(
                lambda: broker_ready(bootstrap, len(brokers)), timeout, f"Kafka metadata on {bootstrap}"
            )
        registry.process.wait_ready(registry.ready, timeout, f"schema registry API on {registry.url}")
        # every shipped pipeline's tables, so analysts, the exporter and Dagster find them before any sink ran
        migrate(self.postgres.dsn(OWNER_ROLE, WAREHOUSE_DB), PIPELINES.values())
        self._wait_spark(timeout)
        self._start_monitoring(timeout)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
        env_lines = "\n".join(f"{k}={v}" for k, v in self.env().items() if k.startswith("TXP_"))
        env_file = self.state_dir / STACK_ENV_FILE
        env_file.write_text(env_lines + "\n")
        env_file.chmod(0o600)
        # last: it reads Kafka and Postgres, and Prometheus scrapes it
        MetricsExporterService.for_stack(self).start(timeout)
        return artifacts

    def down(self, purge: bool = False) -> list[str]:
        """Stop every service (brokers before controllers before Postgres). Returns what was stopped."""
        stopped = []
        if self.dagster.stop(timeout=30):
            stopped.append("dagster")
        if MetricsExporterService.for_stack(self).stop():
            stopped.append("metrics-exporter")
        for service in reversed(self.monitoring()):
            if service.process.stop(timeout=30):
                stopped.append(service.name)
        for process in worker_processes(self.spark_master.root):
            if process.stop(timeout=30):
                stopped.append(process.name)
        if self.spark_master.process.stop(timeout=30):
            stopped.append("spark-master")
        if self.registry.process.stop(timeout=30):
            stopped.append("schema-registry")
        for node in sorted(self.kafka_nodes(), key=lambda n: n.broker_port is None):
            if node.process.stop(timeout=45):
                stopped.append(node.name)
        if self.postgres.process.stop(timeout=30):
            stopped.append("postgres")
        (self.state_dir / STACK_ENV_FILE).unlink(missing_ok=True)
        if purge:
            # first: as root its data lives outside the state dir, found through a record inside it
            self.postgres.purge()
        if purge and self.state_dir.exists():
            import shutil

            shutil.rmtree(self.state_dir)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """Each service with its pid (None when down), ports and log file.

        Monitoring services whose binary is missing are listed with ``not_installed`` set.
        """
        rows = []
        for node in self.kafka_nodes():
            pid = node.process.pid()
            ports = tuple(p for p in (node.broker_port, node.controller_port) if p)
            rows.append(ServiceStatus(node.name, pid is not None, pid, ports, node.log_file))
        registry = self.registry
        pid = registry.process.pid()
        rows.append(ServiceStatus("schema-registry", pid is not None, pid, (registry.port,), registry.log_file))
        pg = self.postgres
        pid = pg.process.pid()
        rows.append(ServiceStatus("postgres", pid is not None, pid, (pg.port,), pg.log_file))
        for service in reversed(self.monitoring()):
            pid = service.process.pid()
            missing = None if pid is not None or service.binary else service.package
            rows.append(ServiceStatus(service.name, pid is not None, pid, (service.port,), service.log_file, missing))
        master = self.spark_master
        pid = master.process.pid()
        if self.layout.spark_workers or pid is not None:
            rows.append(
                ServiceStatus("spark-master", pid is not None, pid, (master.port, master.ui_port), master.log_file)
            )
        for worker in self.spark_workers():
            pid = worker.process.pid()
            rows.append(ServiceStatus(worker.name, pid is not None, pid, (worker.ui_port,), worker.log_file))
        rows.append(MetricsExporterService.for_stack(self).status())
        return rows

    def dagster_status(self) -> ServiceStatus | None:
        """`dagster dev` started by `txp dev`, when it is running."""
        pid = self.dagster.pid()
        return None if pid is None else ServiceStatus("dagster", True, pid, (), self.dagster.log_file)
