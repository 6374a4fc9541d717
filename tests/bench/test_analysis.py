"""Statistics of ``tfrs_linear.bench.analysis`` against hand-computed values."""

import pytest

from tfrs_linear import bench


def test_fit_exponent_recovers_the_power_and_needs_two_lengths():
    assert bench.fit_exponent([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    assert bench.fit_exponent([8], [1.0]) is None


def test_summarize_gives_median_iqr_and_count():
    s = bench.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median_s"] == 3.0 and s["iqr_s"] == 2.0 and s["repeats"] == 5
