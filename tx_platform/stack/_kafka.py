"""Apache Kafka in KRaft mode for the local stack, run from the Maven-resolved broker jars."""

from __future__ import annotations

import base64
import string
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tx_platform.config import PROJECT_ROOT
from tx_platform.errors import StackError
from tx_platform.stack._artifacts import Artifacts, require_java
from tx_platform.stack._process import ManagedProcess, port_in_use

KAFKA_CONFIG_DIR = PROJECT_ROOT / "infra" / "kafka"
#: Rules of the Prometheus JMX exporter agent attached to every Kafka server JVM (not to CLI tools).
JMX_RULES = PROJECT_ROOT / "monitoring" / "jmx" / "kafka-kraft.yml"
_JVM_OPTS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true"]


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's Uuid form).

    Like Kafka's ``Uuid.randomUuid()``, ids starting with ``-`` are drawn again: command-line
    tools (``kafka-storage format -t ID``) would read them as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node: combined controller+broker, or either role alone."""

    node_id: int
    root: Path
    log_file: Path
    broker_port: int | None
    controller_port: int | None
    metrics_port: int | None = None  # the JMX exporter agent's HTTP port (127.0.0.1)

    @property
    def name(self) -> str:
        return f"kafka-{self.node_id}"

    @property
    def roles(self) -> str:
        return ",".join(r for r, p in (("broker", self.broker_port), ("controller", self.controller_port)) if p)

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name=self.name, pid_file=self.root / "kafka.pid", log_file=self.log_file, marker=str(self.root)
        )

    def render_config(self, voters: str, replication: int) -> Path:
        """Write server.properties for this node."""
        listeners = []
        if self.broker_port:
            listeners.append(f"PLAINTEXT://127.0.0.1:{self.broker_port}")
        if self.controller_port:
            listeners.append(f"CONTROLLER://127.0.0.1:{self.controller_port}")
        template = string.Template((KAFKA_CONFIG_DIR / "server.properties.tmpl").read_text())
        text = template.substitute(
            roles=self.roles,
            node_id=self.node_id,
            voters=voters,
            listeners=",".join(listeners),
            advertised_listeners=",".join(listeners[:1]) if self.broker_port else "",
            log_dirs=self.root / "data",
            replication=replication,
            min_isr=min(2, replication),
        )
        if not self.broker_port:
            text = text.replace("advertised.listeners=\n", "").replace("inter.broker.listener.name=PLAINTEXT\n", "")
        path = self.root / "server.properties"
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def format_command(self, java: str, artifacts: Artifacts, config: Path, cluster_id: str) -> list[str]:
        """Argv of the storage-format tool: no JMX agent (it would bind the node's metrics port)."""
        return [
            java, "-cp", artifacts.kafka_classpath(),
            f"-Dlog4j2.configurationFile={KAFKA_CONFIG_DIR / 'log4j2.properties'}", "kafka.tools.StorageTool",
            "format", "-t", cluster_id, "-c", str(config), "--ignore-formatted",
        ]  # fmt: skip

    def format_storage(self, java: str, artifacts: Artifacts, config: Path, cluster_id: str) -> None:
        """Format the log dir once (KRaft needs it before the first start)."""
        if (self.root / "data" / "meta.properties").exists():
            return
        cmd = self.format_command(java, artifacts, config, cluster_id)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            msg = f"formatting Kafka storage of node {self.node_id} failed:\n{result.stdout}\n{result.stderr}"
            raise StackError(msg)

    def server_command(self, java: str, artifacts: Artifacts, config: Path) -> list[str]:
        """Argv of the ``kafka.Kafka`` server JVM, with the JMX exporter agent when the node has a metrics port.

        The agent goes on this command line only, never into KAFKA_OPTS: every Kafka CLI tool would
        load it too and fail on the already bound port ("Address already in use").
        """
        agent = []
        if self.metrics_port:
            agent = [f"-javaagent:{artifacts.jmx_agent()}=127.0.0.1:{self.metrics_port}:{JMX_RULES}"]
        return [
            java, *_JVM_OPTS, *agent, f"-Dlog4j2.configurationFile={KAFKA_CONFIG_DIR / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.root / 'logs'}", "-cp", artifacts.kafka_classpath(), "kafka.Kafka", str(config),
        ]  # fmt: skip

    def start(self, artifacts: Artifacts, voters: str, replication: int, cluster_id: str) -> None:
        """Render config, format on first start, launch the JVM (no wait)."""
        proc = self.process
        if proc.pid() is not None:
            return
        for port in (self.broker_port, self.controller_port, self.metrics_port):
            if port and port_in_use(port):
                msg = f"port {port} on 127.0.0.1 is already in use — stop what uses it or choose other ports"
                raise StackError(msg)
        java = require_java()
        config = self.render_config(voters, replication)
        self.format_storage(java, artifacts, config, cluster_id)
        proc.start(self.server_command(java, artifacts, config), cwd=self.root)


def broker_ready(bootstrap: str, expected_brokers: int = 1) -> bool:
    """True when the cluster answers metadata requests with all expected brokers."""
    for server in bootstrap.split(","):
        host, _, port = server.rpartition(":")
        if not port_in_use(int(port), host):
            return False  # not listening yet: skip the client, whose retries would flood the log
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2_000})
    try:
        metadata = admin.list_topics(timeout=2)
    except KafkaException:
        return False
    return len(metadata.brokers) >= expected_brokers
