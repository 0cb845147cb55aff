"""A Spark standalone cluster in the local stack: one master and N workers from the pip-installed Spark.

Both run as ``spark-class`` child processes bound to 127.0.0.1 (``SPARK_LOCAL_IP`` and ``--host``:
the executors a worker launches inherit its environment, so they bind to loopback too), with pid
files, logs and work directories under ``<state>/spark``. Started only for ``txp stack up
--spark-workers N`` with N > 0; then ``TXP_SPARK_MASTER`` points at the master.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tx_platform.errors import StackError
from tx_platform.stack._artifacts import require_java
from tx_platform.stack._process import ManagedProcess, port_in_use

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
#: Heap of the master and worker daemons themselves (executors get ``spark.executor.memory``).
_DAEMON_MEMORY = "512m"


def spark_class() -> Path:
    """``spark-class`` of the virtualenv's pyspark (beside this interpreter)."""
    script = Path(sys.executable).parent / "spark-class"
    if not script.exists():
        msg = f"{script} not found: the Spark cluster runs from the pip-installed pyspark of this virtualenv"
        raise StackError(msg)
    return script


def spark_home() -> Path:
    """The pip-installed pyspark package: a complete Spark distribution (``jars/``, ``bin/``)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        msg = "pyspark is not installed in this virtualenv"
        raise StackError(msg)
    return Path(spec.origin).parent


def _daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    java = Path(require_java()).resolve()
    return {
        # spark-class would ask `python3` on PATH where pyspark is, and that may not be this virtualenv's
        "SPARK_HOME": str(spark_home()),
        # spark-class runs $JAVA_HOME/bin/java when set; the java found on PATH otherwise
        "JAVA_HOME": os.environ.get("JAVA_HOME") or str(java.parent.parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_MASTER_HOST": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": _DAEMON_MEMORY,
        # IPv4 sockets: 127.0.0.1 itself, not an IPv6-mapped ::ffff:127.0.0.1
        "SPARK_DAEMON_JAVA_OPTS": "-Djava.net.preferIPv4Stack=true",
        **(extra or {}),
    }


def _get_json(url: str) -> Any:  # noqa: ANN401 - JSON
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


@dataclass(frozen=True)
class SparkMaster:
    """The standalone master: RPC on ``port``, web UI (and its ``/json/`` state) on ``ui_port``."""

    root: Path
    port: int
    ui_port: int
    log_file: Path

    @property
    def url(self) -> str:
        """The master URL drivers connect to."""
        return f"spark://127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="spark-master",
            pid_file=self.root / "master.pid",
            log_file=self.log_file,
            # the trailing space (an argument separator) keeps 809 from matching 8090
            marker=f"{MASTER_CLASS} --host 127.0.0.1 --port {self.port} --webui-port {self.ui_port} ",
        )

    def start(self) -> None:
        """Launch (no wait) unless running; the caller waits for its workers with :meth:`alive_workers`."""
        proc = self.process
        if proc.pid() is not None:
            return
        for port in (self.port, self.ui_port):
            if port_in_use(port):
                msg = f"port {port} on 127.0.0.1 is already in use — stop what uses it or choose another port"
                raise StackError(msg)
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            str(spark_class()), MASTER_CLASS,
            "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port),
        ]  # fmt: skip
        # no REST submission server (it would listen on 6066 whatever the stack's ports): drivers use the RPC port
        env = {"SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}
        proc.start(argv, env=_daemon_env(env), cwd=self.root)

    def state(self) -> dict[str, Any]:
        """The master's ``/json/``: workers, active and completed applications."""
        return dict(_get_json(f"{self.ui_url}/json/"))

    def ready(self) -> bool:
        """True when the web UI answers with the master's state."""
        try:
            self.state()
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return True

    def has_worker(self, ui_port: int) -> bool:
        """True when the worker serving its UI on ``ui_port`` is registered and ALIVE."""
        return ui_port in self.alive_workers()

    def alive_workers(self) -> set[int]:
        """Web UI ports of the workers registered and ALIVE (empty when the master does not answer)."""
        try:
            workers = self.state().get("workers", [])
        except (urllib.error.URLError, OSError, ValueError):
            return set()
        return {
            int(w["webuiaddress"].rsplit(":", 1)[1])
            for w in workers
            if w.get("state") == "ALIVE" and w.get("webuiaddress")
        }


@dataclass(frozen=True)
class SparkWorker:
    """Worker ``number`` (1-based): offers ``cores`` and ``memory`` to executors; UI on ``ui_port``."""

    number: int
    root: Path  # its work directory: application jars and executor logs
    master_url: str
    ui_port: int
    cores: int
    memory: str
    log_file: Path

    @property
    def name(self) -> str:
        return f"spark-worker-{self.number}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name=self.name,
            pid_file=self.root / "worker.pid",
            log_file=self.log_file,
            marker=f"{WORKER_CLASS} {self.master_url} --host 127.0.0.1 --webui-port {self.ui_port} ",
        )

    def start(self) -> None:
        """Launch (no wait) unless running."""
        proc = self.process
        if proc.pid() is not None:
            return
        if port_in_use(self.ui_port):
            msg = f"port {self.ui_port} on 127.0.0.1 is already in use — stop what uses it or choose another port"
            raise StackError(msg)
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        argv = [
            str(spark_class()), WORKER_CLASS, self.master_url,
            "--host", "127.0.0.1", "--webui-port", str(self.ui_port),
            "--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(self.root),
        ]  # fmt: skip
        env = {
            # executors' shuffle and spill files stay under the state directory, not /tmp
            "SPARK_LOCAL_DIRS": str(tmp),
            # finished applications' directories (jars, executor logs) go after a day
            "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400",
        }
        proc.start(argv, env=_daemon_env(env), cwd=self.root)


def worker_processes(spark_root: Path) -> list[ManagedProcess]:
    """Every worker with a pid file under ``spark_root``, whatever the layout says now (a cluster shrunk
    by ``txp stack up --spark-workers`` or left by an older layout is still found and stopped)."""
    found = []
    for pid_file in sorted(spark_root.glob("worker-*/worker.pid")):
        number = pid_file.parent.name.removeprefix("worker-")
        found.append(
            ManagedProcess(
                name=f"spark-worker-{number}",
                pid_file=pid_file,
                log_file=pid_file.parent.parent.parent / "logs" / f"spark-worker-{number}.log",
                marker=f"{WORKER_CLASS} ",
            )
        )
    return found
