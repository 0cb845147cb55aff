"""The producer's metrics, pushed to the Prometheus Pushgateway (its figures exist only in its process).

``txp produce`` pushes every few seconds from a background thread and once more at exit, failed
runs included. The grouping key is ``{job="txp_producer", pipeline}``, pushed with PUT (``push``):
the group always holds exactly the current run's figures, which start at 0 with every run; a new
run is a counter reset that ``rate()``/``increase()`` handle, and nothing is read back from the
gateway, so a lost or restarted gateway cannot corrupt a total. A missing or failing gateway costs
one warning, never the producer's time: delivery callbacks only add to plain integers, pushes run
off the hot path with a bounded timeout.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric as MetricFamily
from prometheus_client.exposition import push_to_gateway

from tx_platform.metrics._definitions import (
    DELIVERY_BUCKETS,
    PRODUCER_BYTES_TOTAL,
    PRODUCER_DELIVERY_LATENCY,
    PRODUCER_RECORDS_TOTAL,
    histogram_sample,
)

log = logging.getLogger(__name__)

#: The Pushgateway job of the producer; the pipeline is the other grouping label.
PRODUCER_JOB = "txp_producer"
#: The Pushgateway job of the sink's streaming query progress (``txp_spark_*``), grouped by pipeline too.
SINK_JOB = "txp_sink"


class _Report(Protocol):
    """What the metrics read from the producer's DeliveryReport (its counts are the truth)."""

    delivered: int
    failed: int
    observer: Callable[[Any, Any], None] | None


class ProducerMetrics:
    """A collector over one producer run: counts from its DeliveryReport, bytes and latency observed here."""

    def __init__(self, pipeline: str, report: _Report) -> None:
        self.pipeline = pipeline
        self.report = report
        self.bytes = 0
        self._counts = [0] * len(DELIVERY_BUCKETS)
        self._sum = 0.0
        report.observer = self.observe
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, err: Any, msg: Any) -> None:  # noqa: ANN401 - KafkaError | None, Message
        """Delivery callback: bytes delivered and produce() -> delivery report latency (plain arithmetic)."""
        if err is None:
            self.bytes += len(msg.value() or b"") + len(msg.key() or b"")
        latency = msg.latency()
        if latency is not None:
            self._counts[bisect.bisect_left(DELIVERY_BUCKETS, latency)] += 1
            self._sum += latency

    def collect(self) -> Iterator[MetricFamily]:
        records = PRODUCER_RECORDS_TOTAL.family()
        records.add_metric([self.pipeline, "delivered"], self.report.delivered)
        records.add_metric([self.pipeline, "failed"], self.report.failed)
        size = PRODUCER_BYTES_TOTAL.family()
        size.add_metric([self.pipeline], self.bytes)
        latency = PRODUCER_DELIVERY_LATENCY.histogram_family()
        histogram_sample(latency, [self.pipeline], dict(zip(DELIVERY_BUCKETS, list(self._counts), strict=True)),
                         self._sum, DELIVERY_BUCKETS)  # fmt: skip
        yield from (records, size, latency)


class Pusher:
    """Pushes a registry to the Pushgateway every ``interval`` seconds, soon after ``request``, and on ``stop``.

    ``request`` only sets a flag (any thread, never blocks); the push itself runs on the pusher's thread.
    """

    def __init__(
        self,
        url: str,
        registry: CollectorRegistry,
        grouping_key: dict[str, str],
        job: str = PRODUCER_JOB,
        interval: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.registry = registry
        self.grouping_key = grouping_key
        self.job = job
        self.interval = interval
        self.timeout = timeout
        self.pushes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="txp-metrics-push", daemon=True)

    def push(self) -> bool:
        """One push (PUT: the group becomes this registry). False, and one warning per run, on failure."""
        try:
            push_to_gateway(self.url, self.job, self.registry, grouping_key=self.grouping_key, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - whatever the gateway does, producing goes on
            self.failures += 1
            if self.failures == 1:
                log.warning("metrics: could not push to the Pushgateway at %s (%s); %s goes on without it",
                            self.url, exc, self._what)  # fmt: skip
            else:
                log.debug("metrics: push to %s failed again: %s", self.url, exc)
            return False
        self.pushes += 1
        return True

    @property
    def _what(self) -> str:
        return {PRODUCER_JOB: "producing", SINK_JOB: "the sink"}.get(self.job, self.job)

    def _loop(self) -> None:
        self.push()  # at start: the new run's zeros make the counter reset visible
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.push()

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Ask for a push soon (on the pusher's thread); returns at once."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the loop (a push in flight ends within ``timeout``), then push the final figures."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 1)
        self.push()


@contextmanager
def pushing_producer_metrics(
    report: _Report, pipeline: str, url: str, interval: float = 5.0, timeout: float = 2.0
) -> Iterator[ProducerMetrics]:
    """Observe a producer's DeliveryReport and push its metrics while the block runs, and at its end.

    ``pipeline`` is the producer's spec name (``producer.spec.name``), never derived from its topic:
    records produced to a test or per-environment topic keep their pipeline's label.
    """
    metrics = ProducerMetrics(pipeline, report)
    pusher = Pusher(url, metrics.registry, {"pipeline": pipeline}, interval=interval, timeout=timeout)
    pusher.start()
    try:
        yield metrics
    finally:
        pusher.stop()
