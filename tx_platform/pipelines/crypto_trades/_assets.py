"""Derived assets of the `crypto_trades` pipeline: candles (Spark streaming), metrics, spread, whales, anomalies.

    kafka/<topic> ──▶ warehouse/crypto_candles_1m ──▶ warehouse/crypto_symbol_metrics
                                                 └──▶ warehouse/crypto_price_anomalies ◀─┐
    warehouse/crypto_trades ──▶ warehouse/crypto_spread_1m                               │
                            ├─▶ warehouse/crypto_whale_alerts                            │
                            └────────────────────────────────────────────────────────────┘

The candles come from the topic itself (a Spark Structured Streaming query run AvailableNow);
they also depend on the trades table so that they run after the sink and their reconciliation
check sees the same trades. The other tables are rebuilt in SQL (``_derived``). Every table
holds the rows of the spec's topic (``source_topic``), so the same assets on a test topic never
touch the shipped topic's rows.

Price anomalies are flagged, not rejected: exchanges do print such trades, and rejecting them
would make volume and VWAP disagree with the venue.
"""

# no `from __future__ import annotations`: Dagster reads the ops' annotations (context, resources) as types

from collections.abc import Callable, Iterator

import pandera.pandas as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_pyspark import LazyPySparkResource
from pandera.errors import SchemaErrors
from psycopg2.extensions import connection as Connection

from spark_jobs.transforms import ALLOWED_LATENESS, CANDLES, run_candles_available_now
from tx_platform.assets import OWNERS, DerivedDefinition, derived_metadata, derived_tags, pipeline_keys
from tx_platform.checks._markdown import markdown_table, pandera_failures
from tx_platform.pipelines import PipelineSpec
from tx_platform.pipelines.crypto_trades._checks import (
    candle_gaps,
    candles_schema,
    price_anomalies_schema,
    read_table,
    reconcile_candles,
    spread_schema,
    symbol_metrics_schema,
    whale_alerts_schema,
)
from tx_platform.pipelines.crypto_trades._derived import (
    ANOMALY_PCT,
    rebuild_price_anomalies,
    rebuild_spread,
    rebuild_symbol_metrics,
    rebuild_whale_alerts,
)
from tx_platform.resources import PostgresResource, SettingsResource

CANDLES_KEY = AssetKey(["warehouse", CANDLES.table])
SYMBOL_METRICS_KEY = AssetKey(["warehouse", "crypto_symbol_metrics"])
SPREAD_KEY = AssetKey(["warehouse", "crypto_spread_1m"])
WHALE_ALERTS_KEY = AssetKey(["warehouse", "crypto_whale_alerts"])
PRICE_ANOMALIES_KEY = AssetKey(["warehouse", "crypto_price_anomalies"])


def _schema_check(
    conn: Connection, table: str, topic: str, schema: pa.DataFrameSchema, check_name: str = "matches_schema"
) -> AssetCheckResult:
    """Validate ``table``'s rows of ``topic`` against ``schema``: the result, with failure cases."""
    frame = read_table(conn, table, topic)
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        # the failing rows as a markdown table, with what each failed
        return AssetCheckResult(
            check_name=check_name,
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            metadata={"rows": MetadataValue.int(len(frame)), **pandera_failures(frame, exc)},
        )
    return AssetCheckResult(check_name=check_name, passed=True, metadata={"rows": MetadataValue.int(len(frame))})


def _row_count(conn: Connection, table: str, topic: str) -> int:
    return len(read_table(conn, table, topic))


def _candles_asset(spec: PipelineSpec) -> AssetsDefinition:
    keys = pipeline_keys(spec)
    query = CANDLES.query_name(spec)

    @asset(
        key=CANDLES_KEY,
        deps=[keys.topic, keys.table],
        group_name=spec.name,
        kinds={"spark", "postgres"},
        owners=OWNERS,
        tags=derived_tags(spec),
        metadata=derived_metadata(spec, CANDLES.table),
        description=f"One-minute OHLCV candles per symbol of `{spec.topic}`: a Spark Structured Streaming query "
        f"(`{query}`, run AvailableNow) on event time with a watermark of {ALLOWED_LATENESS}, upserting each "
        "micro-batch's candles with its `stream_batches` ledger row in one Postgres transaction. A trade later "
        "than the watermark is left out of its candle and counted as late (the sink still stores it).",
        check_specs=[
            AssetCheckSpec(
                "ohlc_invariants",
                asset=CANDLES_KEY,
                blocking=True,
                description="Pandera: low <= open, close <= high; volume, trade count > 0; VWAP within [low, high].",
            ),
            AssetCheckSpec(
                "reconciles_with_trades",
                asset=CANDLES_KEY,
                # blocking, but its failures are WARN (late trades are a policy): a WARN never blocks
                blocking=True,
                description=f"Per symbol and minute, trade count, volume, first and last price equal those of the "
                f"trades in `{spec.table}` the candle query has read. A late trade's minute shows up here.",
            ),
            AssetCheckSpec(
                "no_gaps",
                asset=CANDLES_KEY,
                blocking=True,
                description="Every minute between a symbol's first and last candle has a candle (a gap is a minute "
                "without trades, or a lost candle).",
            ),
        ],
    )
    def crypto_candles_1m(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        postgres: PostgresResource,
        settings: SettingsResource,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        """Run the candle query over everything new in the topic, then check the candles."""
        stats = run_candles_available_now(pyspark.spark_session, spec, settings.settings)
        context.log.info(
            f"candles: {stats.input_rows} records in {stats.batches} batches -> {stats.rows} candles upserted, "
            f"{stats.late_rows} late trades dropped, {stats.replayed} replayed batches; {stats.seconds:.1f} s"
        )
        with postgres.connection() as conn:
            yield MaterializeResult(
                metadata={
                    "batches": stats.batches,
                    "rows_upserted": stats.rows,
                    "records_read": stats.input_rows,
                    "late_trades_dropped": stats.late_rows,
                    "replayed_batches": stats.replayed,
                    "seconds": stats.seconds,
                    "dagster/row_count": MetadataValue.int(_row_count(conn, CANDLES.table, spec.topic)),
                }
            )
            yield _schema_check(conn, CANDLES.table, spec.topic, candles_schema(), "ohlc_invariants")
            report = reconcile_candles(conn, spec.topic, query)
            yield AssetCheckResult(
                check_name="reconciles_with_trades",
                passed=report.ok,
                # late trades are a policy, not corruption: flagged for a look, not a failed run
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "minutes_compared": report.minutes_compared,
                    "mismatches": len(report.mismatches),
                    "late_trades_dropped_this_run": stats.late_rows,
                    "report": MetadataValue.text(report.describe()),
                    "sample_failing_rows": markdown_table(
                        [
                            {
                                "symbol": m.symbol,
                                "minute": f"{m.minute:%Y-%m-%d %H:%M}",
                                "trades": m.trades,
                                "candle": m.candle,
                            }
                            for m in report.mismatches
                        ]
                    ),  # fmt: skip
                },
            )
            gaps = candle_gaps(conn, spec.topic)
            yield AssetCheckResult(
                check_name="no_gaps",
                passed=not gaps,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "gaps": len(gaps),
                    "sample_failing_rows": markdown_table(
                        [{"symbol": s, "missing_minute": f"{m:%Y-%m-%d %H:%M}"} for s, m in gaps]
                    ),
                },
            )

    return crypto_candles_1m


def _rebuilt_asset(
    spec: PipelineSpec,
    key: AssetKey,
    deps: list[AssetKey],
    rebuild: Callable[[Connection, str], int],
    schema: Callable[[], pa.DataFrameSchema],
    description: str,
    check_description: str,
) -> AssetsDefinition:
    table = key.path[-1]

    @asset(
        key=key,
        deps=deps,
        group_name=spec.name,
        kinds={"postgres", "sql"},
        owners=OWNERS,
        tags=derived_tags(spec),
        metadata=derived_metadata(spec, table),
        description=description,
        check_specs=[AssetCheckSpec("matches_schema", asset=key, description=check_description, blocking=True)],
    )
    def _rebuilt(postgres: PostgresResource) -> Iterator[MaterializeResult | AssetCheckResult]:
        """Rebuild the table's rows of the pipeline's topic in one transaction, then check them."""
        with postgres.connection() as conn:
            rows = rebuild(conn, spec.topic)
            yield MaterializeResult(metadata={"source_topic": spec.topic, "dagster/row_count": MetadataValue.int(rows)})
            yield _schema_check(conn, table, spec.topic, schema())

    return _rebuilt


def derived_assets(spec: PipelineSpec) -> list[DerivedDefinition]:
    """The crypto pipeline's derived assets, each with its checks, in group ``spec.name``."""
    trades = pipeline_keys(spec).table
    return [
        _candles_asset(spec),
        _rebuilt_asset(
            spec, SYMBOL_METRICS_KEY, [CANDLES_KEY], rebuild_symbol_metrics, symbol_metrics_schema,
            "Per symbol and minute: VWAP, the 15-minute notional-weighted VWAP and the 15-minute volatility (sample "
            "standard deviation of one-minute log returns of close; NULL with fewer than 2), from the candles.",
            "Pandera: positive VWAPs, volatility >= 0.",
        ),
        _rebuilt_asset(
            spec, SPREAD_KEY, [trades], rebuild_spread, spread_schema,
            "Per symbol and minute with at least two exchanges: the lowest and highest exchange VWAP, spread_bps "
            "= (high - low) x 1e4 / mid, and the cheapest and dearest exchange.",
            "Pandera: spread_bps >= 0, low <= high, two exchanges or more, cheapest != dearest.",
        ),
        _rebuilt_asset(
            spec, WHALE_ALERTS_KEY, [trades], rebuild_whale_alerts, whale_alerts_schema,
            "Trades whose price x quantity reaches their symbol's whale_notional (crypto_instruments, synced from "
            "the market catalogue).",
            "Pandera: notional = price x quantity >= threshold.",
        ),
        _rebuilt_asset(
            spec, PRICE_ANOMALIES_KEY, [trades, CANDLES_KEY], rebuild_price_anomalies, price_anomalies_schema,
            f"Trades more than {ANOMALY_PCT} % outside the previous minute's [low, high] candle of their symbol. "
            "Flagged, not rejected: exchanges do print such trades, and rejecting them would make volume and VWAP "
            "disagree with the venue.",
            f"Pandera: |deviation_pct| > {ANOMALY_PCT}, price outside the previous range.",
        ),
    ]  # fmt: skip
