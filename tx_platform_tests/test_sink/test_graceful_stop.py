"""The continuous sink stops gracefully on SIGINT/SIGTERM and loses nothing, whichever the pipeline."""

import signal
import time
from pathlib import Path

import pytest

from tx_platform.config import Settings
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS, PipelineSpec
from tx_platform_tests.conftest import assert_eventually, fetch_one, produce_records, start_continuous_sink

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize(
    ("signum", "pipeline"),
    [(signal.SIGINT, TRANSACTIONS), (signal.SIGTERM, CRYPTO_TRADES)],
    ids=["SIGINT-transactions", "SIGTERM-crypto_trades"],
)
def test_continuous_sink_finishes_its_batch_and_exits_cleanly(
    settings: Settings,
    create_topic,  # noqa: ANN001
    tmp_path: Path,
    unique: str,
    signum: int,
    pipeline: PipelineSpec,
) -> None:
    spec = pipeline.with_topic(f"{pipeline.name}_{unique}")
    create_topic(spec.topic)
    log = tmp_path / "sink.log"
    proc = start_continuous_sink(spec, settings, log)
    try:
        assert_eventually(lambda: "sink running" in log.read_text(), timeout=90, what="the sink to start")
        produce_records(spec, settings, 500, seed=700 + int(signum), hours_ago=1.0)

        def stored() -> int:
            query = f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s"  # noqa: S608 - the spec's table
            return int(fetch_one(settings.dsn(), query, spec.topic)[0])

        assert_eventually(lambda: stored() == 500, timeout=60, what="500 rows from the running sink")
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 30
        text = log.read_text()
        assert f"signal {int(signum)}: stopping the query; a batch in flight commits whole" in text
        assert "sink stopped" in text
        assert "Traceback" not in text
        assert stored() == 500
    finally:
        if proc.poll() is None:
            proc.kill()
