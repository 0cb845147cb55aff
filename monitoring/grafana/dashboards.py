"""Grafana dashboards of tx_platform, as code: `python monitoring/grafana/dashboards.py` writes dashboards/*.json.

Plain Python (no dependency). Edit this file, run it, commit both: a unit test checks that the committed
JSON is exactly what this file generates (tx_platform_tests/test_monitoring/test_dashboards.py), and an
end-to-end test evaluates every panel's query against a live stack (test_panels_live.py).

Datasources (provisioning/datasources/datasources.yml): ``prometheus`` (PromQL) and ``warehouse``
(PostgreSQL as the read-only role txp_analyst). Every pipeline (``tx_platform.pipelines.PIPELINES``)
reports under its ``pipeline`` label, and pipeline metrics are filtered with the ``$pipeline``
variable (``label_values(txp_sink_rows_total, pipeline)``, multi-select, All by default), so a new
pipeline shows up without new panels. Warehouse panels of a pipeline board read the selected
pipelines' topics (``$topic``: the topics their lag is reported on) from the tables shared by topic.
Panels that can legitimately have nothing to show (no offline partitions, no failed deliveries) end
in ``or vector(0)`` so that "nothing" reads as 0, not "No data".

The Crypto market board is the ``crypto_trades`` pipeline's own: its ``txp_crypto_*`` metrics
(tx_platform/pipelines/crypto_trades/_metrics.py) and its derived tables (candles, whale alerts,
price anomalies, spread), for the symbols of ``$symbol``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
WAREHOUSE = {"type": "grafana-postgresql-datasource", "uid": "warehouse"}

#: the pipeline selector every pipeline metric's PromQL uses
P = 'pipeline=~"$pipeline"'

Json = dict[str, Any]


class Board:
    """One dashboard: panels laid out left to right on a 24-column grid, ids in order."""

    def __init__(self, uid: str, title: str, tags: list[str], description: str) -> None:
        self.uid, self.title, self.tags, self.description = uid, title, tags, description
        self.panels: list[Json] = []
        self.variables: list[Json] = []
        self._x = 0
        self._y = 0
        self._row_h = 0
        self.time_from = "now-6h"

    def variable(self, name: str, label: str, definition: str, *, all_value: str | None = ".+") -> Board:
        """A multi-select variable of Prometheus label values (``label_values(...)``), All by default.

        ``all_value`` ``.+`` keeps PromQL short; None makes All expand to every value, which SQL needs
        (``${name:sqlstring}`` -> ``'a','b'``).
        """
        variable: Json = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": PROMETHEUS,
            "definition": definition,
            "query": {"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": all_value,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "hide": 0,
            "options": [],
            "regex": "",
            "skipUrlSync": False,
        }
        if all_value is None:
            del variable["allValue"]
        self.variables.append(variable)
        return self

    def pipeline_variable(self, metric: str = "txp_sink_rows_total") -> Board:
        """``$pipeline``: the pipelines that report ``metric``."""
        return self.variable("pipeline", "Pipeline", f"label_values({metric}, pipeline)")

    def topic_variable(self) -> Board:
        """``$topic``: the selected pipelines' topics (their lag series), for warehouse panels."""
        return self.variable("topic", "Topic", f"label_values(txp_sink_lag_records{{{P}}}, topic)", all_value=None)

    def _place(self, w: int, h: int) -> Json:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"h": h, "w": w, "x": self._x, "y": self._y}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> Board:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1
        return self

    def panel(
        self,
        title: str,
        kind: str,
        targets: list[Json],
        *,
        description: str = "",
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        thresholds: list[tuple[float | None, str]] | None = None,
        options: Json | None = None,
        custom: Json | None = None,
        extra: Json | None = None,
    ) -> Board:
        datasource = targets[0]["datasource"]
        steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
        defaults: Json = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
        if custom:
            defaults["custom"] = custom
        panel: Json = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": datasource,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {},
            "targets": [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)],
            **(extra or {}),
        }
        self.panels.append(panel)
        return self

    def stat(self, title: str, expr: str, **kw: Any) -> Board:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
        }
        return self.panel(title, "stat", [prom(expr, instant=True)], w=kw.pop("w", 6), h=4, options=options, **kw)

    def timeseries(self, title: str, *targets: Json, **kw: Any) -> Board:
        options = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}}
        return self.panel(title, "timeseries", list(targets), options=options, **kw)

    def table(self, title: str, *targets: Json, **kw: Any) -> Board:
        return self.panel(title, "table", list(targets), options={"showHeader": True}, **kw)

    def to_json(self) -> Json:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["tx_platform", *self.tags],
            "timezone": "utc",
            "editable": False,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [],
            "panels": self.panels,
        }


def prom(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "") -> Json:
    """A PromQL target (refId is set by the panel); ``fmt`` ``table`` for a table of instant values."""
    target: Json = {"datasource": PROMETHEUS, "expr": expr, "legendFormat": legend or "__auto", "range": not instant}
    if instant:
        target["instant"] = True
    if fmt:
        target["format"] = fmt
    return target


def sql(raw: str, fmt: str = "table") -> Json:
    """A SQL target on the warehouse (Grafana macros: $__timeFilter(column))."""
    return {"datasource": WAREHOUSE, "rawQuery": True, "editorMode": "code", "format": fmt, "rawSql": raw}


def quantiles(metric: str, label: str, by: str = "") -> list[Json]:
    """p50, p95, p99 of a histogram over the selected pipelines."""
    group = f"le{', ' + by if by else ''}"
    return [
        prom(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{P}}}[$__rate_interval])))",
            f"{label} p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.95, 0.99)
    ]


# -- Kafka cluster ---------------------------------------------------------------------------------------
def kafka_cluster() -> Board:
    """The Kafka cluster: quorum, partition health, requests, topics."""
    b = Board(
        "txp-kafka-cluster",
        "Kafka cluster",
        ["kafka"],
        "KRaft quorum, partition health, requests and topic throughput (JMX exporter, job kafka).",
    )
    red_above_0 = [(None, "green"), (1, "red")]
    b.row("Health")
    b.stat(
        "Active controllers",
        "sum(kafka_controller_kafkacontroller_activecontrollercount) or vector(0)",
        description="Exactly 1 in a healthy KRaft quorum (alert KafkaActiveControllerCountNotOne).",
        thresholds=[(None, "red"), (1, "green"), (2, "red")],
        w=4,
    )
    b.stat(
        "Offline partitions",
        "sum(kafka_controller_kafkacontroller_offlinepartitionscount) or vector(0)",
        description="Partitions without a leader (alert KafkaOfflinePartitions).",
        thresholds=red_above_0,
        w=4,
    )
    b.stat(
        "Under-replicated partitions",
        "sum(kafka_server_replicamanager_underreplicatedpartitions) or vector(0)",
        thresholds=[(None, "green"), (1, "orange")],
        w=4,
    )
    b.stat(
        "Under min ISR partitions",
        "sum(kafka_server_replicamanager_underminisrpartitioncount) or vector(0)",
        description="acks=all producers are refused on these (alert KafkaUnderMinIsrPartitions).",
        thresholds=red_above_0,
        w=4,
    )
    b.stat(
        "Unclean leader elections (range)",
        "sum(increase(kafka_controller_controllerstats_uncleanleaderelections_total[$__range])) or vector(0)",
        description="An out-of-sync replica became leader: committed records may be lost.",
        thresholds=red_above_0,
        w=4,
    )
    b.stat(
        "Active brokers",
        "sum(kafka_controller_kafkacontroller_activebrokercount) or vector(0)",
        w=4,
    )
    b.timeseries(
        "Targets up",
        prom("up", "{{job}} {{instance}}"),
        description="Every Prometheus scrape target: 1 up, 0 down.",
        custom={"drawStyle": "line", "lineInterpolation": "stepAfter"},
        w=24,
        h=6,
    )
    b.row("Requests")
    b.timeseries(
        "Request rate by type",
        prom("sum by (request) (rate(kafka_network_requestmetrics_requests_total[$__rate_interval]))", "{{request}}"),
        unit="reqps",
    )
    b.timeseries(
        "Request total time p99 by type",
        prom('max by (request) (kafka_network_requestmetrics_totaltimems{quantile="0.99"})', "{{request}}"),
        description="The broker's own reservoir p99 (max over brokers).",
        unit="ms",
    )
    b.row("Topics")
    b.timeseries(
        "Bytes in / out per topic",
        prom('sum by (topic) (rate(kafka_server_brokertopicmetrics_bytesin_total{topic!=""}[$__rate_interval]))',
             "in {{topic}}"),
        prom('sum by (topic) (rate(kafka_server_brokertopicmetrics_bytesout_total{topic!=""}[$__rate_interval]))',
             "out {{topic}}"),
        unit="Bps",
    )  # fmt: skip
    b.timeseries(
        "Messages in per topic",
        prom(
            'sum by (topic) (rate(kafka_server_brokertopicmetrics_messagesin_total{topic!=""}[$__rate_interval]))',
            "{{topic}}",
        ),
        unit="short",
    )
    b.timeseries(
        "Log size per partition",
        prom("sum by (topic, partition) (kafka_log_log_size)", "{{topic}}/{{partition}}"),
        description="Bytes on disk, summed over the partition's replicas.",
        unit="bytes",
    )
    b.timeseries(
        "ISR shrinks / expands",
        prom("sum(rate(kafka_server_replicamanager_isrshrinks_total[$__rate_interval])) or vector(0)", "shrinks"),
        prom("sum(rate(kafka_server_replicamanager_isrexpands_total[$__rate_interval])) or vector(0)", "expands"),
        unit="short",
    )
    return b


# -- Pipeline SLO overview -------------------------------------------------------------------------------
def pipeline_slo() -> Board:
    """The pipeline's SLO overview: sink, latency, dead letters, producer."""
    b = Board(
        "txp-pipeline-slo",
        "Pipeline SLO overview",
        ["pipeline", "slo"],
        "Sink throughput, lag, latency against the SLO, dead letters and the producer (txp metrics serve, "
        "Pushgateway).",
    ).pipeline_variable()
    b.row("Now")
    b.stat("Lag (records)", f"sum(txp_sink_lag_records{{{P}}})", thresholds=[(None, "green"), (1000, "orange")])
    b.stat(
        "Since last commit",
        f"time() - max(txp_sink_last_commit_timestamp_seconds{{{P}}})",
        description="Alert SinkNoProgress: lag > 0 and nothing committed for 10 minutes.",
        unit="s",
        thresholds=[(None, "green"), (600, "red")],
    )
    b.stat("E2E latency SLO", f"max(txp_e2e_latency_slo_seconds{{{P}}})", unit="s")
    b.stat(
        "Exporter sources up",
        "min(txp_exporter_up) or vector(0)",
        description="1 when txp metrics serve could read every source (Kafka, Postgres) on its last scrape.",
        thresholds=[(None, "red"), (1, "green")],
    )
    b.row("Sink")
    b.timeseries(
        "Throughput by outcome",
        prom(f"sum by (pipeline, outcome) (rate(txp_sink_rows_total{{{P}}}[$__rate_interval]))",
             "{{pipeline}} {{outcome}}"),
        unit="rowsps",
    )  # fmt: skip
    b.timeseries(
        "Lag per partition",
        prom(f"sum by (pipeline, topic, partition) (txp_sink_lag_records{{{P}}})",
             "{{pipeline}} {{topic}}/{{partition}}"),
        unit="short",
    )  # fmt: skip
    b.timeseries(
        "End-to-end latency vs SLO",
        *quantiles("txp_e2e_latency_seconds", "e2e"),
        prom(f"max(txp_e2e_latency_slo_seconds{{{P}}})", "SLO"),
        description="Event time to commit in Postgres (alert E2ELatencyAboveSLO on p99).",
        unit="s",
    )
    b.timeseries(
        "Kafka-to-commit latency",
        *quantiles("txp_kafka_to_commit_latency_seconds", "kafka→commit"),
        description="Kafka record timestamp to commit: the sink's own share of the latency.",
        unit="s",
    )
    b.timeseries(
        "Dead-letter ratio vs threshold",
        prom(
            f'(sum(rate(txp_sink_rows_total{{{P}, outcome="quarantined"}}[$__rate_interval])) or vector(0))'
            f' / sum(rate(txp_sink_rows_total{{{P}, outcome=~"inserted|quarantined"}}[$__rate_interval]))',
            "quarantined share",
        ),
        prom(f"max(txp_dead_letter_ratio_threshold{{{P}}})", "threshold"),
        description="Alert DeadLetterRateHigh when the share stays above the threshold.",
        unit="percentunit",
    )
    b.timeseries(
        "Commit duration",
        *quantiles("txp_sink_commit_duration_seconds", "commit")[1:],
        prom(f"sum(rate(txp_sink_batches_total{{{P}}}[$__rate_interval]))", "batches/s"),
        unit="s",
    )
    b.row("Producer")
    b.timeseries(
        "Producer records/s by result",
        prom(f"sum by (pipeline, result) (rate(txp_producer_records_total{{{P}}}[$__rate_interval]))",
             "{{pipeline}} {{result}}"),
        prom(f'sum(rate(txp_producer_records_total{{{P}, result="failed"}}[$__rate_interval])) or vector(0)',
             "failed"),
        unit="short",
    )  # fmt: skip
    b.timeseries(
        "Producer bytes/s and delivery latency p99",
        prom(f"sum(rate(txp_producer_bytes_total{{{P}}}[$__rate_interval]))", "bytes/s"),
        # the producer pushes the counters of its current run (they start at 0 with each run): the
        # quantile over the whole run, which a short run (pushed once, at its end) has too
        prom(
            f"histogram_quantile(0.99, sum by (le) (txp_producer_delivery_latency_seconds_bucket{{{P}}}))",
            "delivery p99 of the last run (s)",
        ),
        unit="Bps",
    )
    b.timeseries(
        "Exporter up by source",
        prom("txp_exporter_up", "{{source}}"),
        custom={"drawStyle": "line", "lineInterpolation": "stepAfter"},
        w=24,
        h=6,
    )
    return b


# -- Dead letters ----------------------------------------------------------------------------------------
def dead_letters() -> Board:
    """Dead letters: quarantine counters and the newest quarantined rows."""
    b = Board(
        "txp-dead-letters",
        "Dead letters",
        ["pipeline", "dlq"],
        "Records the sink quarantined and published to the dead-letter topic; `txp dlq show` lists them too.",
    )
    b.pipeline_variable().topic_variable()
    b.stat("Quarantined (total)", f"sum(txp_sink_quarantined_total{{{P}}}) or vector(0)", w=8)
    b.stat("Dead-lettered (total)", f"sum(txp_sink_dead_lettered_total{{{P}}}) or vector(0)", w=8)
    b.stat(
        "Awaiting the dead-letter topic",
        f"(sum(txp_sink_quarantined_total{{{P}}}) or vector(0))"
        f" - (sum(txp_sink_dead_lettered_total{{{P}}}) or vector(0))",
        description="Quarantined but not yet acknowledged on the DLQ; it should return to 0.",
        thresholds=[(None, "green"), (1, "orange")],
        w=8,
    )
    b.timeseries(
        "Quarantined by error code",
        prom(f"sum by (error_code) (txp_sink_quarantined_total{{{P}}}) > 0", "{{error_code}}"),
        description="Cumulative; codes that never occurred are hidden.",
    )
    b.timeseries(
        "Quarantine rate by error code",
        prom(f"sum by (error_code) (rate(txp_sink_quarantined_total{{{P}}}[$__rate_interval]))", "{{error_code}}"),
        unit="short",
    )
    b.table(
        "Newest quarantined records",
        sql(
            'SELECT seen_at AS "time", error_code, reason, kafka_topic AS topic, kafka_partition AS partition,\n'
            '       kafka_offset AS "offset", dlq_offset\n'
            "FROM quarantine\n"
            "WHERE $__timeFilter(seen_at) AND kafka_topic IN (${topic:sqlstring})\n"
            "ORDER BY seen_at DESC, kafka_topic, kafka_partition, kafka_offset DESC\n"
            "LIMIT 100"
        ),
        w=24,
        h=10,
    )
    b.table(
        "Quarantined by error code (warehouse)",
        sql(
            "SELECT error_code, kafka_topic AS topic, count(*) AS records,\n"
            "       count(*) FILTER (WHERE dlq_offset IS NULL) AS not_yet_dead_lettered\n"
            "FROM quarantine\n"
            "WHERE $__timeFilter(seen_at) AND kafka_topic IN (${topic:sqlstring})\n"
            "GROUP BY error_code, kafka_topic\n"
            "ORDER BY records DESC"
        ),
        w=24,
    )
    return b


# -- Business KPIs ---------------------------------------------------------------------------------------
def business_kpis() -> Board:
    """Business KPIs from the warehouse (read-only analyst role)."""
    b = Board(
        "txp-business-kpis",
        "Business KPIs",
        ["warehouse", "business"],
        "Card transactions (the transactions pipeline) from the warehouse as the read-only role txp_analyst, "
        "over the dashboard's time range (event time). Amounts are never summed across currencies.",
    )
    b.time_from = "now-24h"
    b.timeseries(
        "Transactions per hour",
        sql(
            "SELECT date_trunc('hour', event_time) AS \"time\", count(*) AS transactions\n"
            "FROM transactions\n"
            "WHERE $__timeFilter(event_time)\n"
            "GROUP BY 1\n"
            "ORDER BY 1",
            "time_series",
        ),
    )
    b.timeseries(
        "Amount per hour by currency",
        sql(
            "SELECT date_trunc('hour', event_time) AS \"time\", currency AS metric, sum(amount) AS amount\n"
            "FROM transactions\n"
            "WHERE $__timeFilter(event_time)\n"
            "GROUP BY 1, 2\n"
            "ORDER BY 1",
            "time_series",
        ),
    )
    b.timeseries(
        "Refund share per hour",
        sql(
            "SELECT date_trunc('hour', event_time) AS \"time\",\n"
            "       avg(CASE WHEN transaction_type = 'REFUND' THEN 1.0 ELSE 0.0 END) AS refund_share\n"
            "FROM transactions\n"
            "WHERE $__timeFilter(event_time)\n"
            "GROUP BY 1\n"
            "ORDER BY 1",
            "time_series",
        ),
        unit="percentunit",
    )
    b.table(
        "Per currency",
        sql(
            "SELECT currency, count(*) AS transactions, sum(amount) AS amount,\n"
            "       avg(amount)::numeric(18,2) AS avg_amount,\n"
            "       count(*) FILTER (WHERE transaction_type = 'REFUND') AS refunds\n"
            "FROM transactions\n"
            "WHERE $__timeFilter(event_time)\n"
            "GROUP BY currency\n"
            "ORDER BY transactions DESC"
        ),
    )
    b.table(
        "Top merchants",
        sql(
            "SELECT merchant_id, merchant_category, currency, count(*) AS transactions, sum(amount) AS amount\n"
            "FROM transactions\n"
            "WHERE $__timeFilter(event_time) AND transaction_type = 'PURCHASE'\n"
            "GROUP BY merchant_id, merchant_category, currency\n"
            "ORDER BY transactions DESC, amount DESC\n"
            "LIMIT 20"
        ),
        w=24,
        h=10,
    )
    return b


# -- Spark streaming -----------------------------------------------------------------------------------
def spark_streaming() -> Board:
    """Spark streaming: each query's progress, pushed by the sink's listener after every batch, in every mode."""
    b = Board(
        "txp-spark-streaming",
        "Spark streaming",
        ["pipeline", "spark"],
        "The sink's streaming query as Spark reports it after each micro-batch (Dagster's AvailableNow runs "
        "and continuous sinks alike), from the Pushgateway. A continuous driver also serves Spark's own "
        "metrics (jobs spark and spark_executors).",
    ).pipeline_variable()
    b.stat("Batches in the last run", f"sum(txp_spark_batches_total{{{P}}})", w=8)
    b.stat("Rows in the last batch", f"sum(txp_spark_batch_rows{{{P}}})", w=8)
    b.stat("Last batch duration", f"max(txp_spark_batch_duration_seconds{{{P}}})", unit="s", w=8)
    b.timeseries(
        "Input and processed rows/s",
        prom(
            f'{{__name__=~"txp_spark_(input|processed)_rows_per_second",{P}}}',
            "{{__name__}} {{pipeline}}",
        ),
        description="Processed below input for long means the sink falls behind (see the lag).",
        unit="rowsps",
    )
    b.timeseries(
        "Batch duration",
        prom(f"txp_spark_batch_duration_seconds{{{P}}}", "{{pipeline}}"),
        description="Trigger to commit of each micro-batch, decoding and the Postgres commit included.",
        unit="s",
    )
    b.timeseries("Rows per batch", prom(f"txp_spark_batch_rows{{{P}}}", "{{pipeline}}"), w=24, h=6)
    return b


# -- Crypto market -----------------------------------------------------------------------------------------
#: the crypto pipelines and symbols every market metric's PromQL uses
M = f'{P}, symbol=~"$symbol"'
#: log scale: one chart holds BTC near 1e5 and DOGE near 0.1
LOG_SCALE = {"scaleDistribution": {"type": "log", "log": 10}}


def crypto_market() -> Board:
    """The crypto market of the crypto_trades pipeline: prices, volume, VWAP, volatility, spread, whales, anomalies."""
    b = Board(
        "txp-crypto-market",
        "Crypto market",
        ["pipeline", "crypto"],
        "Trades of the crypto_trades pipeline as the warehouse holds them: txp_crypto_* metrics (txp metrics "
        "serve, from crypto_trades and its derived tables) and the derived tables themselves. Prices and notionals "
        "are in each symbol's quote currency, never added up across currencies. Prices far outside the previous "
        "minute's range are flagged as anomalies, not rejected.",
    )
    b.pipeline_variable("txp_crypto_trades_total").topic_variable()
    # All expands to every symbol (no catch-all value): the SQL panels need the list
    b.variable("symbol", "Symbol", f"label_values(txp_crypto_trades_total{{{P}}}, symbol)", all_value=None)
    b.row("Now")
    b.stat("Trades/s", f"sum(rate(txp_crypto_trades_total{{{M}}}[$__rate_interval])) or vector(0)", unit="short")
    b.stat(
        "Newest trade age",
        f"time() - max(txp_crypto_last_trade_timestamp_seconds{{{M}}})",
        description="Seconds since the event time of the newest stored trade: how fresh the figures below are.",
        unit="s",
        thresholds=[(None, "green"), (300, "orange")],
    )
    b.stat(
        "Whale trades (range)",
        f"sum(increase(txp_crypto_whale_trades_total{{{M}}}[$__range])) or vector(0)",
        description="Trades at or above their symbol's whale notional (crypto_whale_alerts).",
        thresholds=[(None, "green"), (1, "purple")],
    )
    b.stat(
        "Price anomalies (range)",
        f"sum(increase(txp_crypto_price_anomalies_total{{{M}}}[$__range])) or vector(0)",
        description="Trades printed far outside the previous minute's range: flagged, kept in volume and VWAP "
        "(alert CryptoPriceAnomalies).",
        thresholds=[(None, "green"), (1, "orange")],
    )
    b.row("Prices")
    b.timeseries(
        "Last price by exchange",
        prom(f"max by (symbol, exchange) (txp_crypto_last_price{{{M}}})", "{{symbol}} {{exchange}}"),
        description="Price of each venue's newest trade, in the quote currency (log scale).",
        unit="none",
        custom=LOG_SCALE,
    )
    b.timeseries(
        "VWAP: newest minute and 15 minutes",
        prom(f"max by (symbol) (txp_crypto_vwap{{{M}}})", "{{symbol}} 1m"),
        prom(f"max by (symbol) (txp_crypto_vwap_15m{{{M}}})", "{{symbol}} 15m"),
        description="Volume-weighted average price (crypto_symbol_metrics), in the quote currency (log scale).",
        unit="none",
        custom=LOG_SCALE,
    )
    b.table(
        "Last price per symbol and exchange",
        prom(f"max by (symbol, exchange) (txp_crypto_last_price{{{M}}})", instant=True, fmt="table"),
        w=24,
        h=7,
    )
    b.row("Volume")
    b.timeseries(
        "Base volume per minute by symbol",
        prom(f"60 * sum by (symbol) (rate(txp_crypto_base_volume_total{{{M}}}[$__rate_interval]))", "{{symbol}}"),
        description="Quantity traded per minute, in each symbol's base asset (log scale).",
        unit="none",
        custom=LOG_SCALE,
    )
    b.timeseries(
        "Notional per minute by quote currency",
        prom(
            f"60 * sum by (quote_currency) (rate(txp_crypto_quote_notional_total{{{M}}}[$__rate_interval]))",
            "{{quote_currency}}",
        ),
        description="Price x quantity traded per minute, per quote currency (never added across currencies).",
        unit="none",
    )
    b.timeseries(
        "Trades/s by exchange and side",
        prom(f"sum by (exchange, side) (rate(txp_crypto_trades_total{{{M}}}[$__rate_interval]))",
             "{{exchange}} {{side}}"),
        unit="short",
        w=24,
        h=7,
    )  # fmt: skip
    b.row("Risk")
    b.timeseries(
        "Volatility (15 minutes)",
        prom(f"max by (symbol) (txp_crypto_volatility_15m{{{M}}})", "{{symbol}}"),
        description="Sample standard deviation of 1-minute log returns of the close over the last 15 minutes.",
        unit="percentunit",
    )
    b.timeseries(
        "Cross-exchange spread",
        prom(f"max by (symbol) (txp_crypto_spread_bps{{{M}}})", "{{symbol}}"),
        description="Highest minus lowest exchange VWAP of the newest minute traded on two venues or more, over "
        "their mid, in basis points.",
        unit="none",
    )
    b.panel(
        "Whale trades by symbol (range)",
        "bargauge",
        [prom(f"sum by (symbol) (increase(txp_crypto_whale_trades_total{{{M}}}[$__range]))", "{{symbol}}",
              instant=True)],
        options={"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        w=8,
    )  # fmt: skip
    b.panel(
        "Newest whale notional by symbol",
        "bargauge",
        [prom(f"max by (symbol) (txp_crypto_last_whale_notional{{{M}}})", "{{symbol}}", instant=True)],
        description="Price x quantity of each symbol's newest whale trade, in its quote currency.",
        options={"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        w=8,
    )  # fmt: skip
    b.panel(
        "Price anomalies by symbol (range)",
        "bargauge",
        [prom(f"sum by (symbol) (increase(txp_crypto_price_anomalies_total{{{M}}}[$__range]))", "{{symbol}}",
              instant=True)],
        options={"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        w=8,
    )  # fmt: skip
    b.row("Warehouse")
    b.panel(
        "1-minute candles: $symbol",
        "candlestick",
        [
            sql(
                'SELECT minute AS "time", open, high, low, close, volume\n'
                "FROM crypto_candles_1m\n"
                "WHERE $__timeFilter(minute) AND symbol IN (${symbol:sqlstring})"
                " AND source_topic IN (${topic:sqlstring})\n"
                "ORDER BY minute",
                "time_series",
            )
        ],
        description="OHLCV per minute from the streaming candle query (event time, watermark); one panel per "
        "selected symbol.",
        unit="none",
        options={"mode": "candles+volume", "candleStyle": "candles", "colorStrategy": "open-close",
                 "colors": {"up": "green", "down": "red"}, "includeAllFields": False},
        extra={"repeat": "symbol", "repeatDirection": "h", "maxPerRow": 2},
        h=9,
    )  # fmt: skip
    b.table(
        "Newest whale trades",
        sql(
            'SELECT event_time AS "time", symbol, exchange, side, price, quantity, notional, threshold\n'
            "FROM crypto_whale_alerts\n"
            "WHERE $__timeFilter(event_time) AND symbol IN (${symbol:sqlstring})"
            " AND source_topic IN (${topic:sqlstring})\n"
            "ORDER BY event_time DESC, trade_id\n"
            "LIMIT 50"
        ),
        w=24,
    )
    b.table(
        "Newest price anomalies",
        sql(
            'SELECT event_time AS "time", symbol, exchange, price, previous_low, previous_high,\n'
            "       round(deviation_pct, 3) AS deviation_pct\n"
            "FROM crypto_price_anomalies\n"
            "WHERE $__timeFilter(event_time) AND symbol IN (${symbol:sqlstring})"
            " AND source_topic IN (${topic:sqlstring})\n"
            "ORDER BY event_time DESC, trade_id\n"
            "LIMIT 50"
        ),
        description="Prices more than the anomaly threshold outside the previous minute's [low, high]; signed "
        "deviation in percent.",
    )
    b.table(
        "Widest spreads",
        sql(
            'SELECT minute AS "time", symbol, exchanges, cheapest_exchange, dearest_exchange,\n'
            "       round(spread_bps, 2) AS spread_bps\n"
            "FROM crypto_spread_1m\n"
            "WHERE $__timeFilter(minute) AND symbol IN (${symbol:sqlstring})"
            " AND source_topic IN (${topic:sqlstring})\n"
            "ORDER BY spread_bps DESC, minute DESC, symbol\n"
            "LIMIT 50"
        ),
        description="Minutes with the widest cross-exchange spread (crypto_spread_1m).",
    )
    return b


BOARDS = {
    "kafka-cluster.json": kafka_cluster,
    "pipeline-slo.json": pipeline_slo,
    "spark-streaming.json": spark_streaming,
    "dead-letters.json": dead_letters,
    "business-kpis.json": business_kpis,
    "crypto-market.json": crypto_market,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build().to_json(), indent=2, ensure_ascii=False) + "\n" for name, build in BOARDS.items()}


def main() -> int:
    """Write every dashboard into dashboards/ and remove JSON files no board generates."""
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    rendered = render()
    for stale in set(p.name for p in DASHBOARDS_DIR.glob("*.json")) - set(rendered):
        (DASHBOARDS_DIR / stale).unlink()
    for name, text in rendered.items():
        (DASHBOARDS_DIR / name).write_text(text)
    print(f"wrote {len(rendered)} dashboards to {DASHBOARDS_DIR}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
