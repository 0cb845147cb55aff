"""What the `spark-submit` entry points share: the pipeline options and a session that defers to spark-submit."""

from __future__ import annotations

import argparse
import logging
import os

from pyspark import SparkConf
from pyspark.sql import SparkSession

from spark_jobs.session import spark_config
from tx_platform.config import Settings
from tx_platform.pipelines import PIPELINES, PipelineSpec, get_pipeline


def pipeline_parser(description: str | None, default_pipeline: str, default_trigger: str) -> argparse.ArgumentParser:
    """An argument parser with ``--available-now``, ``--trigger``, ``--pipeline``, ``--topic`` and ``--jars``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--available-now", action="store_true", help="process what is there, then stop")
    parser.add_argument("--trigger", default=default_trigger, help=f"micro-batch interval (default: {default_trigger})")
    parser.add_argument(
        "--pipeline", default=default_pipeline, choices=sorted(PIPELINES), help=f"default: {default_pipeline}"
    )
    parser.add_argument("--topic", help="read this topic instead of the pipeline's (its DLQ: <topic>.dlq)")
    parser.add_argument(
        "--jars",
        default=os.environ.get("TXP_SPARK_JARS", ""),
        help="comma-separated connector jars when not run by spark-submit (env: TXP_SPARK_JARS)",
    )
    return parser


def parse_pipeline(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, PipelineSpec, list[str]]:
    """Parse ``argv``, set up logging, and return the arguments, the pipeline (on ``--topic``) and the jars."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s")
    return args, get_pipeline(args.pipeline, args.topic or None), [j for j in args.jars.split(",") if j]


def submitted_session(settings: Settings, jars: list[str], app_name: str, metrics: bool = False) -> SparkSession:
    """A session configured for ``settings``; what spark-submit set (master, jars, ...) wins over our defaults."""
    if metrics and settings.spark_master.startswith("local"):
        # Spark's UI binds to SPARK_LOCAL_IP, else to every interface: loopback only, like the driver
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    wanted = spark_config(settings, jars, app_name=app_name, metrics=metrics)
    given = SparkConf()
    builder = SparkSession.builder
    for key, value in wanted.items():
        if not given.contains(key):
            builder = builder.config(key, value)
    return builder.getOrCreate()
