"""`make demo`: stack up, produce seeded transactions, materialize every asset, run every check."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from confluent_kafka.admin import AdminClient

from tx_platform.config import Settings
from tx_platform.errors import StackError
from tx_platform.stack import LocalStack

#: Tables the demo empties before it starts (with --reset, the default).
_PIPELINE_TABLES = (
    "transactions",
    "quarantine",
    "sink_offsets",
    "sink_batches",
    "sink_gaps",
    "sink_leases",
    "dlq_progress",
    "sink_latency",
    "daily_merchant_summary",
)


@dataclass
class DemoSummary:
    """What the demo did, printed as its last line (one JSON object)."""

    produced: int = 0
    injected_bad: int = 0
    transactions_rows: int = 0
    quarantined: int = 0
    dlq: int = 0
    lag: int = 0
    amount_sum_expected: str = "0"
    amount_sum_stored: str = "0"
    partitions: list[str] = field(default_factory=list)
    checks_passed: int = 0
    checks_failed: int = 0
    failed_checks: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No failed check, every produced record accounted for, sums equal, nothing left behind."""
        return (
            self.checks_failed == 0
            and self.checks_passed > 0
            and self.produced == self.transactions_rows + self.quarantined
            and self.quarantined == self.injected_bad
            and self.dlq == self.quarantined
            and self.amount_sum_expected == self.amount_sum_stored
            and self.lag == 0
        )


def _reset(settings: Settings, log: Callable[[str], None]) -> None:
    """Delete the pipeline's topics, tables' rows and checkpoints so counts start from zero."""
    from tx_platform.warehouse import transaction

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topics = [t for t in (settings.topic, settings.dlq_topic) if t in admin.list_topics(timeout=15).topics]
    if topics:
        for future in admin.delete_topics(topics).values():
            future.result(timeout=30)
        deadline = time.monotonic() + 60
        while set(topics) & set(admin.list_topics(timeout=15).topics):
            if time.monotonic() > deadline:
                msg = f"Kafka did not finish deleting {topics} within 60 s"
                raise StackError(msg)
            time.sleep(0.5)
    # the tables exist: run_demo starts the stack, which applies the schema
    with transaction(settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE " + ", ".join(_PIPELINE_TABLES))
    shutil.rmtree(settings.sink_checkpoint(settings.topic), ignore_errors=True)
    log(f"reset: deleted topics {topics or '(none)'}, emptied {len(_PIPELINE_TABLES)} tables and the checkpoint")


def run_demo(
    stack: LocalStack,
    count: int,
    seed: int,
    reset: bool = True,
    bad_ratio: float = 0.0,
    log: Callable[[str], None] = print,
) -> DemoSummary:
    """Run the whole pipeline headless against ``stack`` and return the summary."""
    started = time.monotonic()
    summary = DemoSummary()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        result = fn()
        summary.timings[name] = round(time.monotonic() - t0, 2)
        log(f"{name}: {summary.timings[name]:.1f} s")
        return result

    timed("stack_up", stack.up)
    os.environ.update(stack.env())  # definitions and the Dagster instance point at this stack
    from dagster import AssetSelection, DagsterInstance, materialize

    from tx_platform.config import load_settings
    from tx_platform.definitions import ASSET_CHECKS, ASSETS, build_resources
    from tx_platform.kafka_admin import end_offsets
    from tx_platform.metrics import pushing_producer_metrics
    from tx_platform.producer import generate, open_producer, produce
    from tx_platform.resources import compute_lag
    from tx_platform.warehouse import committed_offsets, transaction

    settings = load_settings()
    if reset:
        timed("reset", lambda: _reset(settings, log))
    resources = build_resources(settings)
    instance = DagsterInstance.get()
    everything = [*ASSETS, *ASSET_CHECKS]

    def run(selection: AssetSelection, partition_key: str | None = None) -> None:
        result = materialize(
            everything,
            selection=selection,
            resources=resources,
            instance=instance,
            partition_key=partition_key,
            raise_on_error=True,
        )
        for evaluation in result.get_asset_check_evaluations():
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            if partition_key:
                name += f"[{partition_key}]"
            if evaluation.passed:
                summary.checks_passed += 1
            else:
                summary.checks_failed += 1
                summary.failed_checks.append(name)

    timed("topics", lambda: run(AssetSelection.groups("kafka")))

    start = datetime.now(UTC) - timedelta(hours=24)
    producer, _registration = open_producer(
        settings.kafka_bootstrap, settings.topic, settings.schema_registry_url, bad_ratio=bad_ratio, seed=seed
    )
    # the producer's figures go to the Pushgateway like `txp produce`'s (never in the way if it is down)
    with pushing_producer_metrics(producer.report, producer.spec.name, settings.pushgateway_url):
        report = timed("produce", lambda: produce(generate(count, seed, start), producer))
    summary.produced = report.delivered
    summary.injected_bad = producer.faults.injected_total if producer.faults else 0
    summary.amount_sum_expected = str(producer.good_amount)

    timed(
        "sink",
        lambda: run(AssetSelection.groups("warehouse")),
    )
    days = sorted({(start + timedelta(hours=h)).date().isoformat() for h in (0, 24)})
    summary.partitions = days
    for day in days:
        timed(f"daily_merchant_summary[{day}]", partial(run, AssetSelection.groups("analytics"), day))

    with transaction(settings.dsn()) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), coalesce(sum(amount), 0) FROM transactions")
            rows, stored = cur.fetchone()
            cur.execute("SELECT count(*) FROM quarantine")
            (quarantined,) = cur.fetchone()
        committed = committed_offsets(conn, settings.topic)
    summary.transactions_rows = int(rows)
    summary.quarantined = int(quarantined)
    summary.amount_sum_stored = str(stored)
    summary.dlq = sum(end_offsets(settings.kafka_bootstrap, settings.dlq_topic).values())
    summary.lag = compute_lag(end_offsets(settings.kafka_bootstrap, settings.topic), committed).total
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def summary_json(summary: DemoSummary) -> str:
    """The demo's last line."""
    data = dict(summary.__dict__)
    data["ok"] = summary.ok
    return json.dumps(data, separators=(",", ":"))
