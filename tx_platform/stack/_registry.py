"""The schema registry of the local stack: Apicurio Registry with the Confluent-compatible API.

Built from Maven Central by ``infra/maven/schema-registry`` and run as ``java -jar``; its schemas
live in the stack's PostgreSQL (database ``registry``), so they survive restarts and keep their ids.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tx_platform.errors import StackError
from tx_platform.stack._artifacts import Artifacts, require_java
from tx_platform.stack._process import ManagedProcess, port_in_use

#: Where the Confluent Schema Registry API is served.
CCOMPAT_PATH = "/apis/ccompat/v7"
_JVM_OPTS = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true"]


@dataclass(frozen=True)
class RegistryService:
    """Apicurio Registry bound to 127.0.0.1."""

    root: Path
    port: int
    log_file: Path
    jdbc_url: str
    username: str
    password: str

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="schema-registry",
            pid_file=self.root / "registry.pid",
            log_file=self.log_file,
            marker=f"quarkus.http.port={self.port}",
        )

    def start(self, artifacts: Artifacts) -> None:
        """Launch the JVM (no wait); the caller waits with :meth:`ready`."""
        proc = self.process
        if proc.pid() is not None:
            return
        if port_in_use(self.port):
            msg = f"port {self.port} on 127.0.0.1 is already in use — stop what uses it or choose another port"
            raise StackError(msg)
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            require_java(), *_JVM_OPTS,
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
            f"-Dquarkus.datasource.jdbc.url={self.jdbc_url}",
            f"-Dquarkus.datasource.username={self.username}",
            "-Dregistry.sql.init=true",
            # new subjects default to BACKWARD, as in Confluent's registry (Apicurio's default is NONE)
            "-Dregistry.rules.global.compatibility=BACKWARD",
            "-Dquarkus.log.level=WARN", "-Dquarkus.log.category.io.apicurio.level=INFO",
            "-jar", str(artifacts.registry_runner),
        ]  # fmt: skip
        # the password goes through the environment, not the command line (visible in ps)
        proc.start(argv, env={"QUARKUS_DATASOURCE_PASSWORD": self.password}, cwd=self.root)

    def ready(self) -> bool:
        """True when the Confluent-compatible API answers."""
        if not port_in_use(self.port):
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False
