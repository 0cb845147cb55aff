"""Entry point of the fraud query for `spark-submit` (continuous by default) and Dagster's `warehouse/fraud_alerts`.

    spark-submit --master spark://host:7077 --jars <connector jars> spark_jobs/fraud/main.py \\
        [--available-now] [--trigger "5 seconds"] [--topic transactions]

Settings come from TXP_* variables (see README), the rules' thresholds from TXP_FRAUD_* (see
``tx_platform.pipelines.transactions._fraud.FraudRules``). Ctrl+C / SIGTERM stops the query; a batch
in flight is replayed on the next start (its alerts have the same ids: nothing is written twice).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from spark_jobs._entry import parse_pipeline, pipeline_parser, submitted_session
from spark_jobs.fraud._query import FraudQuery, FraudStats
from tx_platform.config import Settings, load_settings
from tx_platform.pipelines import PipelineSpec

log = logging.getLogger("spark_jobs.fraud")


def run(
    spec: PipelineSpec,
    settings: Settings,
    jars: list[str],
    available_now: bool = False,
    trigger: str = "5 seconds",
) -> FraudStats:
    """Run the fraud query of ``spec`` until stopped (or, with available_now, until it has caught up)."""
    spark = submitted_session(settings, jars, "tx_platform_fraud")
    spark.sparkContext.setLogLevel("WARN")
    query = FraudQuery(spark, spec, settings)
    if available_now:
        stats = query.run_available_now()
        log.info("caught up: %s", stats)
        return stats
    running = query.start(available_now=False, processing_time=trigger)
    stop_requested = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping the fraud query", signum)  # only a flag: no JVM calls in a signal handler
        stop_requested.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    log.info("fraud query running (trigger %s, checkpoint %s); Ctrl+C to stop", trigger, query.checkpoint)
    try:
        while not running.awaitTermination(1):
            if stop_requested.is_set():
                running.stop()
                break
        query.wait(running)
    finally:
        query.close()
    log.info("fraud query stopped: %s", query.stats)
    return query.stats


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    args, spec, jars = parse_pipeline(pipeline_parser(__doc__, "transactions", "5 seconds"), argv)
    run(spec, load_settings(), jars, available_now=args.available_now, trigger=args.trigger)


if __name__ == "__main__":
    main()
