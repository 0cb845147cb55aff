"""`txp metrics serve`: GET /metrics for Prometheus, POST /alerts for Alertmanager's webhook.

Standard library HTTP (a thread per request) and prometheus_client's exposition; bound to
127.0.0.1. Each alert Alertmanager posts becomes one JSON line in the alert log and one log line.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from tx_platform.config import Settings
from tx_platform.metrics._exporter import PipelineCollector
from tx_platform.pipelines import PipelineSpec

log = logging.getLogger(__name__)

#: Largest webhook body accepted (Alertmanager sends at most max_alerts per group; 1 MiB is plenty).
MAX_BODY_BYTES = 1 << 20


class AlertLog:
    """Appends Alertmanager's alerts to a JSON-lines file, one line per alert."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, payload: dict[str, Any]) -> int:
        """Record every alert of one webhook payload; returns how many."""
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            msg = "payload has no list of alerts"
            raise ValueError(msg)
        received = datetime.now(UTC).isoformat()
        lines = []
        for alert in alerts:
            labels = alert.get("labels") or {}
            entry = {
                "receivedAt": received,
                "status": alert.get("status") or payload.get("status"),
                "alertname": labels.get("alertname"),
                "labels": labels,
                "startsAt": alert.get("startsAt"),
                "endsAt": alert.get("endsAt"),
                "summary": (alert.get("annotations") or {}).get("summary"),
                "receiver": payload.get("receiver"),
            }
            lines.append(json.dumps(entry, sort_keys=True))
            others = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
            log.info("alert %s %s {%s} since %s", str(entry["status"]).upper(), entry["alertname"], others,
                     entry["startsAt"])  # fmt: skip
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.writelines(line + "\n" for line in lines)
        return len(lines)


class MetricsServer(ThreadingHTTPServer):
    """The exporter's HTTP server (``port`` 0 picks a free one: see ``server_port``)."""

    daemon_threads = True

    def __init__(self, registry: CollectorRegistry, alert_log: AlertLog, port: int, host: str = "127.0.0.1") -> None:
        self.registry = registry
        self.alert_log = alert_log
        self.host = host
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), content_type)
        elif path == "/-/healthy":
            self._send(200, b"ok\n")
        elif path == "/":
            self._send(200, b"txp metrics exporter: GET /metrics, POST /alerts (Alertmanager webhook)\n")
        else:
            self._send(404, b"not found\n")

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/alerts":
            self._send(404, b"not found\n")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413 if length > MAX_BODY_BYTES else 411, b"a Content-Length up to 1 MiB is required\n")
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(payload, dict):
                msg = "payload is not a JSON object"
                raise ValueError(msg)
            count = self.server.alert_log.append(payload)
        except ValueError as exc:  # JSONDecodeError included
            self._send(400, f"not an Alertmanager webhook payload: {exc}\n".encode())
            return
        self._send(200, f"{count} alerts recorded\n".encode())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - http.server's signature
        log.debug("%s " + format, self.address_string(), *args)


def build_server(
    settings: Settings, port: int, host: str = "127.0.0.1", pipelines: Iterable[PipelineSpec] | None = None
) -> tuple[MetricsServer, PipelineCollector]:
    """The exporter for ``settings``: a registry holding only the pipeline collector, and its server.

    It reports every shipped pipeline, or ``pipelines`` when given (tests point it at their own topics).
    """
    collector = PipelineCollector.from_settings(settings, pipelines)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    alert_log = AlertLog(settings.alerts_log or settings.state_dir / "logs" / "alerts.log")
    return MetricsServer(registry, alert_log, port, host), collector


def serve(settings: Settings, port: int, host: str = "127.0.0.1") -> None:
    """Serve until SIGINT or SIGTERM, then stop accepting, finish the requests in flight and return."""
    server, collector = build_server(settings, port, host)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("metrics exporter: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="txp-metrics-http")
    thread.start()
    log.info("metrics exporter on %s/metrics (alerts: POST %s/alerts -> %s)", server.url, server.url,
             server.alert_log.path)  # fmt: skip
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        collector.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("metrics exporter stopped")
