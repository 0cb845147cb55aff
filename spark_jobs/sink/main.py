"""Entry point of a pipeline's sink for `spark-submit` (continuous by default) and `txp sink`.

    spark-submit --master spark://host:7077 --jars <connector jars> spark_jobs/sink/main.py \\
        [--pipeline crypto_trades] [--available-now] [--trigger "5 seconds"]

Settings come from TXP_* variables (see README); the pipeline from ``--pipeline`` (default
``transactions``). Run with plain ``python``, the connector jars come from ``--jars`` (or
``TXP_SPARK_JARS``); ``txp sink`` resolves them from the Maven cache and passes them.

Ctrl+C / SIGTERM stops the query gracefully: a batch in flight is let finish (up to
``STOP_GRACE_SECONDS``; interrupted after that, it commits or rolls back as a whole and is replayed),
and the next start resumes from Postgres.

Running continuously, the driver serves Spark's metrics in Prometheus format on its UI (local
mode: 127.0.0.1:TXP_SPARK_UI_PORT) and registers itself with the local stack's Prometheus by
writing ``<state>/prometheus/targets/spark-<pid>.json``, deleted when it stops. A driver killed
with SIGKILL leaves its file behind: Prometheus then shows a target that is down until it is removed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from pyspark.sql.streaming import StreamingQuery

from spark_jobs._entry import parse_pipeline, pipeline_parser, submitted_session
from spark_jobs.sink._query import PipelineSink
from tx_platform.config import Settings, load_settings
from tx_platform.pipelines import DEFAULT_PIPELINE, PipelineSpec

log = logging.getLogger("spark_jobs.sink")

#: Seconds a stop waits for the batch in flight to end before it interrupts it (safe either way: an
#: interrupted batch's slices commit whole or not at all, and it is replayed at the next start).
STOP_GRACE_SECONDS = 60.0


def register_target(settings: Settings, pipeline: str, ui_url: str | None, pid: int | None = None) -> Path | None:
    """Write ``<state>/prometheus/targets/spark-<pid>.json`` for the driver's UI (atomically).

    None when there is no UI or no local stack's Prometheus directory to register with.
    """
    targets = settings.state_dir / "prometheus" / "targets"
    if not ui_url or not targets.is_dir():
        log.info("Spark metrics: no Prometheus target written (UI %s, target directory %s)", ui_url, targets)
        return None
    pid = os.getpid() if pid is None else pid
    address = urlsplit(ui_url).netloc
    group = [{"targets": [address], "labels": {"pipeline": pipeline, "pid": str(pid)}}]
    path = targets / f"spark-{pid}.json"
    tmp = targets / f".spark-{pid}.json.tmp"  # outside Prometheus' spark-*.json pattern
    tmp.write_text(json.dumps(group, indent=2) + "\n")
    tmp.replace(path)
    log.info("Spark metrics: %s registered with Prometheus in %s", address, path)
    return path


def _unregister(target: Path | None) -> None:
    if target is not None:
        target.unlink(missing_ok=True)


def stop_between_batches(query: StreamingQuery, grace: float) -> None:
    """Stop ``query`` when no batch is in flight: at once if none is, else when the one running ends
    (its progress is reported) or after ``grace`` seconds, whichever comes first.

    Stopping interrupts a running batch; that is safe (its slices commit whole or not at all and it
    is replayed at the next start), but it redoes the batch's work and fills the log with Spark's
    interruption of the batch's job.
    """
    started = time.monotonic()
    running = query.status["isTriggerActive"]
    if running:
        progress = query.lastProgress
        before = None if progress is None else progress["batchId"]
        log.info("waiting for the batch in flight to end before stopping (up to %.0f s)", grace)
        while query.isActive and time.monotonic() - started < grace:
            progress = query.lastProgress
            if not query.status["isTriggerActive"] or (progress is not None and progress["batchId"] != before):
                running = False
                break
            time.sleep(0.05)
        if running and query.isActive:
            log.warning("the batch in flight did not end within %.0f s: interrupting it (it is replayed at the next "
                        "start)", grace)  # fmt: skip
        else:
            log.info("the batch in flight ended after %.1f s", time.monotonic() - started)
    query.stop()


def run(
    spec: PipelineSpec,
    settings: Settings,
    jars: list[str],
    available_now: bool = False,
    trigger: str = "5 seconds",
) -> None:
    """Run ``spec``'s sink until it is stopped (or, with available_now, until it has caught up)."""
    spark = submitted_session(settings, jars, "tx_platform_sink", metrics=not available_now)
    spark.sparkContext.setLogLevel("WARN")
    sink = PipelineSink(spark, spec, settings)
    if available_now:
        stats = sink.run_available_now()
        log.info("caught up: %s", stats)
        return
    _run_continuously(sink, trigger, settings, spark.sparkContext.uiWebUrl)


def _run_continuously(sink: PipelineSink, trigger: str, settings: Settings, ui_url: str | None) -> None:
    query = sink.start(available_now=False, processing_time=trigger)
    target: Path | None = None
    log.info("sink running (trigger %s, checkpoint %s); Ctrl+C to stop", trigger, sink.checkpoint)
    stop_requested = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # only flag it: calling into the JVM from a signal handler, while the main thread is inside
        # a py4j call, breaks the gateway
        if stop_requested.is_set():
            log.warning("second signal: exiting now")
            _unregister(target)
            os._exit(130)
        log.info(
            "signal %d: stopping the query; a batch in flight is let finish (up to %.0f s; again to exit now)",
            signum, STOP_GRACE_SECONDS,
        )  # fmt: skip
        stop_requested.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        # registered once the signals lead to the finally below, which deletes it
        target = register_target(settings, sink.spec.name, ui_url)
        # until the query ends on its own (an error) or a signal asks it to: acted on at once
        while query.isActive and not stop_requested.wait(1.0):
            pass
        if stop_requested.is_set():
            stop_between_batches(query, STOP_GRACE_SECONDS)
        sink.wait(query)
    finally:
        _unregister(target)
        sink.close()
    log.info("sink stopped: %s", sink.stats)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    args, spec, jars = parse_pipeline(pipeline_parser(__doc__, DEFAULT_PIPELINE, "5 seconds"), argv)
    run(spec, load_settings(), jars, available_now=args.available_now, trigger=args.trigger)


if __name__ == "__main__":
    main()
