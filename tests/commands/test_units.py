"""The one duration grammar (tdptrace.units): every unit, bare seconds, exactness, and what is refused."""
from __future__ import annotations

import pytest

from tdptrace.errors import BadInput
from tdptrace.units import fmt_duration, fmt_ns, parse_duration


@pytest.mark.parametrize("text,ns", [
    ("500us", 500_000), ("500µs", 500_000), ("10ms", 10_000_000), ("2s", 2_000_000_000), ("1m", 60 * 10**9),
    ("1h", 3600 * 10**9), ("250ns", 250), ("1.5s", 1_500_000_000), ("0.5ms", 500_000), (".25s", 250_000_000),
    ("10", 10 * 10**9), ("0.1", 100_000_000), ("3600", 3600 * 10**9), (" 10ms ", 10_000_000), ("10 ms", 10_000_000),
    ("0", 0), ("48h", 48 * 3600 * 10**9), ("123456789.123456789", 123456789123456789),
])
def test_forms(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "ms", "5x", "-1s", "+1s", "1e3", "nan", "inf", "1m30s", "10 sec", "1d",
                                  "1M", "1,5s", "0x10", "10ms;id", "1" * 400 + "h"])
def test_refused(text):
    with pytest.raises(BadInput) as e:
        parse_duration(text)
    assert "duration" in e.value.line() and "\n" not in e.value.line()


@pytest.mark.parametrize("ns", [0, 250, 500_000, 10_000_000, 1_500_000_000, 2 * 10**9, 60 * 10**9, 90 * 10**9,
                                3600 * 10**9, 48 * 3600 * 10**9, 1_234_567])
def test_fmt_duration_reads_back(ns):
    assert parse_duration(fmt_duration(ns)) == pytest.approx(ns, rel=1e-5)


def test_fmt_duration_picks_the_largest_exact_unit():
    assert [fmt_duration(n) for n in (10_000_000, 3600 * 10**9, 90 * 10**9, 1_500_000_000)] == \
        ["10ms", "1h", "90s", "1500ms"]


def test_fmt_ns():
    assert [fmt_ns(x) for x in (None, 850, 850_000, 8_000_000, 1_950_000_000)] == \
        ["-", "850 ns", "850 us", "8.0 ms", "1.95 s"]
