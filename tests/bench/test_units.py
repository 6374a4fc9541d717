"""``tfrs_linear.bench.units``: times and sizes as the reports print them."""

from tfrs_linear import bench


def test_format_time_picks_the_unit_and_keeps_three_digits():
    assert bench.format_time(None) == "–"
    assert bench.format_time(12.34e-6) == "12.3 µs"
    assert bench.format_time(4.567e-3) == "4.57 ms"
    assert bench.format_time(2.0) == "2 s"


def test_format_bytes_uses_binary_units():
    assert bench.format_bytes(None) == "–"
    assert bench.format_bytes(512 * 1024) == "512 KiB"
    assert bench.format_bytes(1.5 * bench.MIB) == "1.5 MiB"
    assert bench.format_bytes(-2 * bench.GIB) == "-2.00 GiB"
