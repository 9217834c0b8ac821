"""The benchmark harness's own arithmetic (the benchmark itself is not part of the suite)."""

from __future__ import annotations

import pytest

from bench.report import percentile, steal_percent, table


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_table_shows_missing_figures_as_dashes() -> None:
    text = table([{"tasks": 10, "strategy": "ours", "latency_p50_ms": None}])
    assert "| tasks" in text.splitlines()[0]
    assert "—" in text.splitlines()[2]


def test_steal_share_is_the_stolen_part_of_the_ticks_between_two_readings() -> None:
    assert steal_percent((1000, 10), (2000, 60)) == 5.0
    assert steal_percent((1000, 10), (1000, 10)) is None  # no time passed
    assert steal_percent(None, (2000, 60)) is None
