"""Entry point of a pipeline's candle query for `spark-submit` (continuous by default).

    spark-submit --master spark://host:7077 --jars <connector jars> spark_jobs/transforms/main.py \\
        [--pipeline crypto_trades] [--topic crypto.trades] [--available-now] [--trigger "10 seconds"]

Settings come from TXP_* variables (see README). Run with plain ``python``, the connector jars come
from ``--jars`` (or ``TXP_SPARK_JARS``). Ctrl+C / SIGTERM stops the query: the batch in flight
commits whole or is processed again on the next start.
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
from spark_jobs.transforms.candles import run_candles, run_candles_available_now
from tx_platform.config import Settings, load_settings
from tx_platform.pipelines import CRYPTO_TRADES, PIPELINES, get_pipeline

log = logging.getLogger("spark_jobs.transforms")


def _session(settings: Settings, jars: list[str]) -> SparkSession:
    wanted = spark_config(settings, jars, app_name="tx_platform_candles")
    given = SparkConf()  # what spark-submit set (master, jars, ...) wins over our local defaults
    builder = SparkSession.builder
    for key, value in wanted.items():
        if not given.contains(key):
            builder = builder.config(key, value)
    return builder.getOrCreate()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the candle query."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--available-now", action="store_true", help="process what is there, then stop")
    parser.add_argument("--trigger", default="10 seconds", help="micro-batch interval (default: 10 seconds)")
    parser.add_argument(
        "--pipeline", default=CRYPTO_TRADES.name, choices=sorted(PIPELINES), help=f"default: {CRYPTO_TRADES.name}"
    )
    parser.add_argument("--topic", help="read this topic instead of the pipeline's")
    parser.add_argument(
        "--jars",
        default=os.environ.get("TXP_SPARK_JARS", ""),
        help="comma-separated connector jars when not run by spark-submit (env: TXP_SPARK_JARS)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s")
    spec = get_pipeline(args.pipeline)
    if args.topic:
        spec = spec.with_topic(args.topic)
    settings = load_settings()
    spark = _session(settings, [j for j in args.jars.split(",") if j])
    spark.sparkContext.setLogLevel("WARN")
    if args.available_now:
        log.info("caught up: %s", run_candles_available_now(spark, spec, settings))
        return
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # only flag it: calling into the JVM from a signal handler breaks the py4j gateway
        if stop.is_set():
            os._exit(130)
        log.info("signal %d: stopping the candle query (again to exit now)", signum)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    log.info("candle query stopped: %s", run_candles(spark, spec, settings, args.trigger, should_stop=stop.is_set))


if __name__ == "__main__":
    main()
