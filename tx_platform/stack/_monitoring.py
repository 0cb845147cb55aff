"""Monitoring of the local stack: Prometheus, Alertmanager, Pushgateway and postgres_exporter.

Debian's packages provide the binaries (``infra/system-deps.sh`` installs them when it can); each
runs as an ordinary child process bound to 127.0.0.1, with its data, pid file and log under the
state directory. They are optional: when a binary is missing the stack starts without it and
``txp stack status`` says which package to install.

Prometheus reads the repository's ``monitoring/prometheus/prometheus.yml`` (the same file Compose
uses) through a symlink in ``<state>/prometheus/``; every scrape job there finds its targets in
``targets/*.json`` beside it (``file_sd_configs``), which this module writes with the local ports.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tx_platform.config import PROJECT_ROOT
from tx_platform.errors import StackError
from tx_platform.stack._kafka import KafkaNode
from tx_platform.stack._process import ManagedProcess, port_in_use

MONITORING_DIR = PROJECT_ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING_DIR / "prometheus" / "prometheus.yml"
PROMETHEUS_RULES = MONITORING_DIR / "prometheus" / "rules"
ALERTMANAGER_CONFIG = MONITORING_DIR / "alertmanager" / "alertmanager.yml"
#: Retention of the local Prometheus: enough for a working day and the next, small on a laptop.
PROMETHEUS_RETENTION = "2d"
#: The alert webhook in the repository's alertmanager.yml; the launcher puts the stack's port in.
ALERT_WEBHOOK = re.compile(r"http://127\.0\.0\.1:\d+/alerts\b")

#: One file_sd target group: {"targets": ["host:port"], "labels": {...}}.
TargetGroup = dict[str, object]


def _group(address: str, **labels: str) -> TargetGroup:
    return {"targets": [address], "labels": labels} if labels else {"targets": [address]}


def local_targets(
    *,
    prometheus_port: int,
    alertmanager_port: int,
    pushgateway_port: int,
    postgres_exporter_port: int,
    registry_port: int,
    metrics_port: int,
    kafka_nodes: Sequence[KafkaNode],
) -> dict[str, list[TargetGroup]]:
    """The file_sd target files of the local stack, by file name (without ``.json``).

    ``spark`` is not here: drivers register in ``targets/spark-*.json`` themselves.
    """
    return {
        "prometheus": [_group(f"127.0.0.1:{prometheus_port}")],
        "alertmanager": [_group(f"127.0.0.1:{alertmanager_port}")],
        "pushgateway": [_group(f"127.0.0.1:{pushgateway_port}")],
        "postgres": [_group(f"127.0.0.1:{postgres_exporter_port}")],
        "registry": [_group(f"127.0.0.1:{registry_port}")],
        "kafka": [
            _group(f"127.0.0.1:{node.metrics_port}", node_id=str(node.node_id), role=node.roles)
            for node in kafka_nodes
            if node.metrics_port
        ],
        "txp": [_group(f"127.0.0.1:{metrics_port}")],
    }


def render_alertmanager_config(template: str, metrics_port: int) -> str:
    """The repository's alertmanager.yml with the webhook pointed at this stack's metrics port."""
    rendered, count = ALERT_WEBHOOK.subn(f"http://127.0.0.1:{metrics_port}/alerts", template)
    if count == 0:
        msg = f"{ALERTMANAGER_CONFIG} has no webhook http://127.0.0.1:<port>/alerts for the launcher to point"
        raise StackError(msg)
    return rendered


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step: Prometheus watches target files and must never read half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _symlink(link: Path, target: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)


def write_prometheus_files(root: Path, targets: Mapping[str, list[TargetGroup]]) -> Path:
    """``root/prometheus.yml`` and ``root/rules`` link to the repository; ``root/targets/*.json``.

    Returns the config file to pass to Prometheus. Relative paths in it (rules, targets) resolve
    against ``root``, the directory of the link, not the repository's.
    """
    targets_dir = root / "targets"
    targets_dir.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    _symlink(config, PROMETHEUS_CONFIG)
    _symlink(root / "rules", PROMETHEUS_RULES)
    for name, groups in targets.items():
        _write_atomically(targets_dir / f"{name}.json", json.dumps(groups, indent=2) + "\n")
    spark = targets_dir / "spark.json"
    if not spark.exists():
        spark.write_text("[]\n")
    return config


def write_alertmanager_config(root: Path, metrics_port: int) -> Path:
    """``root/alertmanager.yml``: the repository's file with this stack's webhook port."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "alertmanager.yml"
    _write_atomically(config, render_alertmanager_config(ALERTMANAGER_CONFIG.read_text(), metrics_port))
    return config


def find_binary(candidates: Sequence[str]) -> str | None:
    """First of ``candidates`` on PATH (Debian's name first, then upstream's)."""
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass(frozen=True)
class MonitoringService:
    """One optional monitoring daemon bound to 127.0.0.1:``port``."""

    name: str
    package: str  # the Debian package that provides it
    binaries: tuple[str, ...]  # names to look for on PATH
    root: Path
    port: int
    log_file: Path
    args: tuple[str, ...]  # after the listen address
    ready_path: str = "/-/ready"
    reloadable: bool = False  # POST /-/reload re-reads the configuration
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets: never on the command line

    @property
    def listen_arg(self) -> str:
        return f"--web.listen-address=127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def binary(self) -> str | None:
        """The executable, or None when the package is not installed."""
        return find_binary(self.binaries)

    @property
    def install_hint(self) -> str:
        return f"apt-get install {self.package}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name=self.name,
            pid_file=self.root / f"{self.name}.pid",
            log_file=self.log_file,
            # the trailing space (an argument separator in the command line) keeps port 1909 from
            # matching a process on 19090
            marker=f"{self.listen_arg} ",
        )

    def start(self) -> bool:
        """Launch (no wait) unless running; False when the binary is missing."""
        binary = self.binary
        if binary is None:
            return False
        proc = self.process
        if proc.pid() is not None:
            return True
        if port_in_use(self.port):
            msg = f"port {self.port} on 127.0.0.1 is already in use — stop what uses it or choose another port"
            raise StackError(msg)
        self.root.mkdir(parents=True, exist_ok=True)
        proc.start([binary, self.listen_arg, *self.args], env=self.env, cwd=self.root)
        return True

    def ready(self) -> bool:
        """True when the HTTP endpoint answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def reload(self) -> None:
        """Ask a running service to re-read its configuration (files rewritten by ``txp stack up``)."""
        if not self.reloadable or self.process.pid() is None:
            return
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")  # noqa: S310 - loopback
        try:
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310
                pass
        except (urllib.error.URLError, OSError) as exc:
            msg = f"{self.name} did not reload its configuration: {exc}; see {self.log_file}"
            raise StackError(msg) from exc


def prometheus_service(root: Path, port: int, log_file: Path, config: Path) -> MonitoringService:
    """Prometheus with the lifecycle API (``/-/reload``) and a short retention."""
    return MonitoringService(
        name="prometheus",
        package="prometheus",
        binaries=("prometheus",),
        root=root,
        port=port,
        log_file=log_file,
        args=(
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--storage.tsdb.retention.time={PROMETHEUS_RETENTION}",
            "--web.enable-lifecycle",
        ),
        reloadable=True,
    )


def alertmanager_service(root: Path, port: int, log_file: Path, config: Path) -> MonitoringService:
    """Alertmanager alone: an empty cluster address turns the gossip listener off."""
    return MonitoringService(
        name="alertmanager",
        package="prometheus-alertmanager",
        binaries=("prometheus-alertmanager", "alertmanager"),
        root=root,
        port=port,
        log_file=log_file,
        args=(f"--config.file={config}", f"--storage.path={root / 'data'}", "--cluster.listen-address="),
        reloadable=True,
    )


def pushgateway_service(root: Path, port: int, log_file: Path) -> MonitoringService:
    """Pushgateway; pushed metrics survive restarts in a file under the state directory."""
    return MonitoringService(
        name="pushgateway",
        package="prometheus-pushgateway",
        binaries=("prometheus-pushgateway", "pushgateway"),
        root=root,
        port=port,
        log_file=log_file,
        args=(f"--persistence.file={root / 'metrics.data'}",),
    )


def postgres_exporter_service(root: Path, port: int, log_file: Path, dsn: str) -> MonitoringService:
    """postgres_exporter; the DSN (with its password) goes through DATA_SOURCE_NAME."""
    return MonitoringService(
        name="postgres-exporter",
        package="prometheus-postgres-exporter",
        binaries=("prometheus-postgres-exporter", "postgres_exporter"),
        root=root,
        port=port,
        log_file=log_file,
        args=(),
        ready_path="/",
        env={"DATA_SOURCE_NAME": dsn},
    )


@dataclass(frozen=True)
class TargetHealth:
    """One scrape target as Prometheus sees it."""

    job: str
    instance: str
    health: str
    last_error: str


@dataclass(frozen=True)
class PipelineHealth:
    """What `txp stack status` says of a pipeline: lag now, p99 event-to-commit latency over 5 minutes."""

    pipeline: str
    lag: int | None
    e2e_p99_seconds: float | None  # None: nothing committed in the last 5 minutes


@dataclass(frozen=True)
class MonitoringSummary:
    """Targets and pipelines from Prometheus, or why they could not be read."""

    targets: tuple[TargetHealth, ...] = ()
    pipelines: tuple[PipelineHealth, ...] = ()
    error: str | None = None


#: The queries behind `txp stack status`; the lag is the sensor's number, summed per pipeline.
LAG_QUERY = "sum by (pipeline) (txp_sink_lag_records)"
P99_QUERY = "histogram_quantile(0.99, sum by (pipeline, le) (rate(txp_e2e_latency_seconds_bucket[5m])))"


def _prometheus_get(url: str, path: str, timeout: float, **params: str) -> Any:  # noqa: ANN401 - JSON
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url.rstrip('/')}{path}{query}", timeout=timeout) as response:  # noqa: S310
        body = json.loads(response.read())
    if body.get("status") != "success":
        msg = f"Prometheus answered {path} with {body.get('error', body)}"
        raise ValueError(msg)
    return body["data"]


def _by_pipeline(data: Any) -> dict[str, float]:  # noqa: ANN401 - JSON
    return {r["metric"].get("pipeline", "?"): float(r["value"][1]) for r in data["result"]}


def monitoring_summary(prometheus_url: str, timeout: float = 3.0) -> MonitoringSummary:
    """Ask Prometheus for its targets' health and each pipeline's lag and e2e p99; never raises."""
    try:
        targets = _prometheus_get(prometheus_url, "/api/v1/targets", timeout, state="active")["activeTargets"]
        lag = _by_pipeline(_prometheus_get(prometheus_url, "/api/v1/query", timeout, query=LAG_QUERY))
        p99 = _by_pipeline(_prometheus_get(prometheus_url, "/api/v1/query", timeout, query=P99_QUERY))
    except (OSError, ValueError, KeyError) as exc:
        return MonitoringSummary(error=f"Prometheus did not answer at {prometheus_url} ({exc})")
    return MonitoringSummary(
        targets=tuple(
            sorted(
                (
                    TargetHealth(
                        t["labels"].get("job", "?"),
                        t["labels"].get("instance", "?"),
                        t["health"],
                        t.get("lastError", ""),
                    )
                    for t in targets
                ),
                key=lambda t: (t.job, t.instance),
            )
        ),  # fmt: skip
        pipelines=tuple(
            PipelineHealth(
                name,
                int(lag[name]) if name in lag else None,
                None if name not in p99 or math.isnan(p99[name]) else p99[name],
            )
            for name in sorted(set(lag) | set(p99))
        ),
    )
