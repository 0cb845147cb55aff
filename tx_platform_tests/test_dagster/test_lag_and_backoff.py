"""Pure logic of the lag sensor: unclamped lag and the retry backoff schedule."""

import pytest

from tx_platform.resources import compute_lag
from tx_platform.sensors import retry_delay_seconds

pytestmark = pytest.mark.unit


def test_committed_ahead_of_end_is_reported_not_clamped() -> None:
    lag = compute_lag({0: 10, 1: 7, 2: 3}, {0: 12, 1: 7, 2: 0})
    assert lag.by_partition == {0: -2, 1: 0, 2: 3}
    assert lag.ahead == {0: (12, 10)}
    assert lag.total == 3  # the backlog counts only partitions that are behind


def test_partition_missing_from_topic_but_committed_is_ahead() -> None:
    # Kafka never removes partitions: a committed partition the topic lacks means it was recreated smaller
    lag = compute_lag({0: 5}, {0: 5, 1: 40})
    assert (lag.by_partition, lag.ahead, lag.total) == ({0: 0, 1: -40}, {1: (40, 0)}, 0)


def test_no_committed_offsets_means_whole_topic_is_lag() -> None:
    lag = compute_lag({0: 4, 1: 0}, {})
    assert (lag.by_partition, lag.ahead, lag.total) == ({0: 4, 1: 0}, {}, 4)


def test_backoff_doubles_per_consecutive_failure_up_to_the_cap() -> None:
    assert [retry_delay_seconds(n, 30, 600) for n in range(7)] == [0, 30, 60, 120, 240, 480, 600]
    assert retry_delay_seconds(10_000, 30, 600) == 600  # no overflow on a long streak
    assert retry_delay_seconds(3, 0, 600) == 0
    assert retry_delay_seconds(1, 30, 10) == 10  # the cap wins even on the first retry
