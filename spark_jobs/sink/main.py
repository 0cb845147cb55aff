"""Entry point of the sink for `spark-submit` (continuous by default) and `txp sink`.

    spark-submit --master spark://host:7077 spark_jobs/sink/main.py [--available-now] [--trigger "5 seconds"]

Settings come from TXP_* variables (see README). Ctrl+C / SIGTERM stops the query gracefully:
the batch in flight commits or rolls back as a whole, and the next start resumes from Postgres.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType

from pyspark import SparkConf
from pyspark.sql import SparkSession

from spark_jobs.session import spark_config
from spark_jobs.sink._query import SinkConfig, TransactionSink
from tx_platform.config import load_settings

log = logging.getLogger("spark_jobs.sink")


def _session() -> SparkSession:
    settings = load_settings()
    wanted = spark_config(settings, app_name="tx_platform_sink")
    given = SparkConf()  # what spark-submit set (master, jars, ...) wins over our local defaults
    builder = SparkSession.builder
    for key, value in wanted.items():
        if not given.contains(key):
            builder = builder.config(key, value)
    return builder.getOrCreate()


def run(available_now: bool = False, trigger: str = "5 seconds") -> None:
    """Run the sink until it is stopped (or, with available_now, until it has caught up)."""
    settings = load_settings()
    spark = _session()
    spark.sparkContext.setLogLevel("WARN")
    sink = TransactionSink(spark, SinkConfig.from_settings(settings))
    if available_now:
        stats = sink.run_available_now()
        log.info("caught up: %s", stats)
        return
    query = sink.start(available_now=False, processing_time=trigger)
    log.info("sink running (trigger %s, checkpoint %s); Ctrl+C to stop", trigger, sink.config.checkpoint)
    stop_requested = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # only flag it: calling into the JVM from a signal handler, while the main thread is inside
        # a py4j call, breaks the gateway
        if stop_requested.is_set():
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("signal %d: stopping after the batch in flight (again to exit now)", signum)
        stop_requested.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not query.awaitTermination(1):
            if stop_requested.is_set():
                query.stop()  # waits for the batch in flight; its commit is all or nothing
                break
        sink.wait(query)
    finally:
        sink.close()
    log.info("sink stopped: %s", sink.stats)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--available-now", action="store_true", help="process what is there, then stop")
    parser.add_argument("--trigger", default="5 seconds", help="micro-batch interval (default: 5 seconds)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s")
    run(available_now=args.available_now, trigger=args.trigger)


if __name__ == "__main__":
    main()
