"""The exporter as a service of the local stack: started, stopped and listed by ``LocalStack``.

``LocalStack`` needs three lines (see ``MetricsExporterService.for_stack``); the stack modules are
imported inside the methods, so that ``tx_platform.stack`` and this package can import each other.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tx_platform.stack import ManagedProcess, ServiceStatus

NAME = "metrics-exporter"


@dataclass(frozen=True)
class MetricsExporterService:
    """``txp metrics serve --port PORT`` as a detached child process of the stack, on 127.0.0.1."""

    port: int
    state_dir: Path
    log_file: Path
    env: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False, repr=False)

    @classmethod
    def for_stack(cls, stack: Any) -> MetricsExporterService:  # noqa: ANN401 - a LocalStack (import cycle)
        """The exporter of a ``LocalStack``: its metrics port, logs dir and connection settings."""
        return cls(stack.layout.metrics_port, stack.state_dir, stack.logs_dir / f"{NAME}.log", stack.env())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        from tx_platform.stack import ManagedProcess

        return ManagedProcess(
            name=NAME,
            pid_file=self.state_dir / f"{NAME}.pid",
            log_file=self.log_file,
            marker=f"tx_platform.metrics serve --port {self.port}",
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start unless running; wait until it answers. Postgres and Kafka need not be up."""
        from tx_platform.errors import StackError
        from tx_platform.stack import port_in_use

        proc = self.process
        if proc.pid() is not None:
            return
        if port_in_use(self.port):
            msg = f"port {self.port} on 127.0.0.1 is already in use — stop what uses it or choose another port"
            raise StackError(msg)
        proc.start([sys.executable, "-m", "tx_platform.metrics", "serve", "--port", str(self.port)], env=self.env)
        proc.wait_ready(self.ready, timeout, f"metrics exporter on {self.url}")

    def ready(self) -> bool:
        """True when the exporter answers its health check."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/healthy", timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM (a graceful shutdown), then SIGKILL after ``timeout``. True if it was running."""
        return self.process.stop(timeout=timeout)

    def status(self) -> ServiceStatus:
        from tx_platform.stack import ServiceStatus

        pid = self.process.pid()
        return ServiceStatus(NAME, pid is not None, pid, (self.port,), self.log_file)
