"""Spark configuration shared by Dagster's PySpark resource and `spark-submit` runs."""

from __future__ import annotations

from tx_platform.config import Settings
from tx_platform.stack import resolve_artifacts


def spark_config(settings: Settings, app_name: str = "tx_platform") -> dict[str, str]:
    """Spark settings for ``settings``: master, connector jars, UTC, loopback-only driver.

    The connector jars come from the Maven cache (resolved on first use), so no session ever
    downloads anything at start-up.
    """
    jars = resolve_artifacts(settings.jars_dir).spark_jars()
    local = settings.spark_master.startswith("local")
    config = {
        "spark.master": settings.spark_master,
        "spark.app.name": app_name,
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "4" if local else "64",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": str(settings.spark_ui).lower(),
    }
    if local:
        # local[*]: the driver and its UI listen on loopback only
        config |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    return config
