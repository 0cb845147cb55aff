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
        assert f"signal {int(signum)}: stopping the query; a batch in flight is let finish" in text
        assert "sink stopped" in text
        assert "Traceback" not in text
        assert stored() == 500
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stop_during_a_batch_waits_for_it_to_end(
    settings: Settings,
    create_topic,  # noqa: ANN001
    tmp_path: Path,
    unique: str,
) -> None:
    """SIGINT while a batch is writing: the batch ends (no interruption, no replay), then the query stops."""
    spec = TRANSACTIONS.with_topic(f"transactions_{unique}")
    create_topic(spec.topic, 4)
    # a backlog first: the first batch takes 60k records, and its slices commit one after the other
    produce_records(spec, settings, 60_000, seed=703, hours_ago=1.0)
    log = tmp_path / "sink.log"
    proc = start_continuous_sink(spec, settings, log)

    def stored() -> int:
        query = f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s"  # noqa: S608 - the spec's table
        return int(fetch_one(settings.dsn(), query, spec.topic)[0])

    try:
        # the batch's first slice is committed: the others are still being written
        deadline = time.monotonic() + 180
        while stored() == 0:
            assert time.monotonic() < deadline, "no slice of the first batch committed in 180 s"
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "waiting for the batch in flight to end before stopping" in text
        assert "the batch in flight ended after" in text
        assert "Traceback" not in text
        assert "InterruptedException" not in text
        # the batch ended whole: every one of its slices committed, nothing of the backlog half-written
        batches = fetch_one(settings.dsn(), "SELECT count(DISTINCT batch_id), sum(records), count(*) FROM sink_batches "
                            "WHERE topic = %s", spec.topic)  # fmt: skip
        assert batches[0] == 1
        assert (batches[1], batches[2]) == (stored(), 4)
    finally:
        if proc.poll() is None:
            proc.kill()
