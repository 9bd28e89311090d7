"""What every store shares (proxy/store/base.py): the ledger bounds operators give."""

from __future__ import annotations

import pytest

from proxy.store.base import instant


@pytest.mark.parametrize("raw,expected", [
    ("1700000000", 1700000000.0), ("1700000000.5", 1700000000.5),
    ("2024-01-02T03:04:05", 1704164645.0), ("2024-01-02T03:04:05+01:00", 1704161045.0), ("2024-01-02", 1704153600.0),
])
def test_an_instant_is_epoch_seconds_or_iso_8601_utc_by_default(raw, expected):
    assert instant(raw) == expected


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e999", "yesterday", "", "2024-13-01",
                                 "1" * 5000])
def test_anything_else_is_no_instant(raw):
    """NaN and the infinities are never an instant (a store would get them as a bound)."""
    assert instant(raw) is None
