"""Entry point of a pipeline's candle query for `spark-submit` (continuous by default).

    spark-submit --master spark://host:7077 --jars <connector jars> spark_jobs/transforms/main.py \\
        [--pipeline crypto_trades] [--topic crypto.trades] [--available-now] [--trigger "10 seconds"]

Settings come from TXP_* variables (see README). Run with plain ``python``, the connector jars come
from ``--jars`` (or ``TXP_SPARK_JARS``). Ctrl+C / SIGTERM stops the query: the batch in flight
commits whole or is processed again on the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from spark_jobs._entry import parse_pipeline, pipeline_parser, submitted_session
from spark_jobs.transforms.candles import run_candles, run_candles_available_now
from tx_platform.config import load_settings
from tx_platform.pipelines import CRYPTO_TRADES

log = logging.getLogger("spark_jobs.transforms")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the candle query."""
    args, spec, jars = parse_pipeline(pipeline_parser(__doc__, CRYPTO_TRADES.name, "10 seconds"), argv)
    settings = load_settings()
    spark = submitted_session(settings, jars, "tx_platform_candles")
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
