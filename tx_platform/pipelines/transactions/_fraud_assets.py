"""Dagster assets of fraud detection: ``warehouse/fraud_alerts`` and ``kafka/fraud_alerts`` (topic ``fraud.alerts``).

One multi-asset runs the fraud query (``spark_jobs/fraud``) once over everything new in the transactions
topic (AvailableNow): it writes both assets together, the alerts in Postgres and each exactly once in
the topic, so they cannot be materialized apart. One run at a time (pool ``fraud_<pipeline>``): two
would race on the query's checkpoint (the query's lease would refuse the second anyway).
"""

from collections.abc import Iterator
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetSpec, MaterializeResult, MetadataValue, multi_asset
from dagster_pyspark import LazyPySparkResource

from tx_platform.pipelines import PipelineSpec, asset_name
from tx_platform.resources import PostgresResource, SettingsResource

OWNERS = ["team:data-platform"]


def fraud_assets(spec: PipelineSpec) -> list[Any]:
    """``warehouse/fraud_alerts`` and ``kafka/<alerts topic>``, downstream of ``kafka/<topic>``."""
    from spark_jobs.fraud._query import alerts_topic  # no Spark session here: the names only

    topic = alerts_topic(spec)
    alerts_key = AssetKey(["warehouse", "fraud_alerts"])
    topic_key = AssetKey(["kafka", asset_name(topic)])
    source_key = AssetKey(["kafka", asset_name(spec.topic)])
    tags = {"txp/pipeline": spec.name, "txp/layer": "fraud"}

    @multi_asset(
        name=f"{spec.name}_fraud",
        specs=[
            AssetSpec(
                alerts_key,
                deps=[source_key],
                group_name=spec.name,
                kinds={"spark", "postgres"},
                owners=OWNERS,
                tags=tags,
                metadata={"dagster/table_name": "txp.public.fraud_alerts"},
                description=f"Postgres `fraud_alerts`: velocity, amount-spike, impossible-travel and card-testing "
                f"alerts of the streaming fraud query over `{spec.topic}` (event time, watermark of the allowed "
                "lateness; alert ids uuid5 of rule and transactions, offsets in `fraud_offsets`).",
            ),
            AssetSpec(
                topic_key,
                deps=[alerts_key],
                group_name=spec.name,
                kinds={"kafka"},
                owners=OWNERS,
                tags=tags,
                description=f"Kafka `{topic}`: each row of `fraud_alerts` once (JSON, keyed by account), published "
                "from Postgres through an outbox (`published_offset` and a scan before sending).",
            ),
        ],
        can_subset=False,
        pool=f"fraud_{spec.name}",
    )
    def _fraud(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        postgres: PostgresResource,
        settings: SettingsResource,
    ) -> Iterator[MaterializeResult]:
        """Run the fraud query once over everything new, then report recall and precision against the ground truth."""
        from spark_jobs.fraud import FraudQuery
        from tx_platform.pipelines.transactions._fraud import fraud_report

        stats = FraudQuery(pyspark.spark_session, spec, settings.settings).run_available_now()
        with postgres.connection() as conn:
            report = fraud_report(conn, topic=spec.topic)
        context.log.info(f"fraud: {stats}; report {report}")
        total = postgres.scalar("SELECT count(*) FROM fraud_alerts WHERE topic = %s", (spec.topic,))
        yield MaterializeResult(
            asset_key=alerts_key,
            metadata={
                "alerts_new": stats.inserted,
                "batches": stats.batches,
                "seconds": stats.seconds,
                "recall": report["recall"],
                "precision": report["precision"],
                "injected": report["injected"],
                "detected": report["detected"],
                "dagster/row_count": MetadataValue.int(int(total or 0)),
            },
        )
        yield MaterializeResult(asset_key=topic_key, metadata={"published": stats.published})

    return [_fraud]
