"""Late readings for buckets already counted in window sums are amended in, without a rebuild."""

from datetime import timedelta

import polars as pl
from polars.testing import assert_frame_equal

from rules import windows
from rules.engine import RuleEngine
from tests.unit.test_rule_kinds import T0, TX, make, rows

RULES = [
    {
        "id": "oil_forecast",
        "kind": "trend",
        "metric": "top_oil_temp_c",
        "limit": 95,
        "window": "30m",
        "horizon": "1h",
    },
    {
        "id": "oil_forecast_exp",
        "kind": "trend",
        "metric": "top_oil_temp_c",
        "limit": 95,
        "window": "30m",
        "horizon": "1h",
        "fit": "exponential",
        "time_constant": "3h",
    },
]


def stats(e: RuleEngine, now_s: float) -> pl.DataFrame:
    now_us = int((T0 + timedelta(seconds=now_s)).timestamp() * 1e6)
    parts = [
        windows.relative_to_now(w.sums.lazy(), w.origin, now_us).collect()
        for w in e._shard_windows
        if w.origin is not None and w.sums.height
    ]
    return pl.concat(parts).sort(windows.KEY)


def oil(s: float) -> float:
    return 70 + 0.01 * s + (0.3 if int(s) % 120 == 0 else -0.3)


def test_late_readings_update_the_window_sums_exactly():
    on_time = [(s, "TX01", "top_oil_temp_c", oil(s)) for s in range(0, 3600, 20) if not 1200 <= s < 1500]
    # Arrives at 3600 s: a 5-minute hole re-sent by the gateway, plus extra readings into counted buckets.
    late = [(s, "TX01", "top_oil_temp_c", oil(s)) for s in range(1200, 1500, 20)]
    late += [(s + 7, "TX01", "top_oil_temp_c", oil(s) + 2) for s in range(2400, 2700, 60)]
    # ...and one bucket so old it has already left the 30-minute window: it must change nothing.
    late += [(300 + 3, "TX01", "top_oil_temp_c", 500.0)]

    amended = make(RULES, TX)
    for t in range(60, 3660, 60):
        amended.evaluate(rows([p for p in on_time if t - 60 <= p[0] < t]), now=T0 + timedelta(seconds=t))
    amended.evaluate(rows(late), now=T0 + timedelta(seconds=3660))
    assert amended.late_buckets_amended > 0

    everything = sorted(on_time + late)
    reference = make(RULES, TX)
    reference.evaluate(rows(everything), now=T0 + timedelta(seconds=3660))  # one pass: a rebuild

    got, want = stats(amended, 3660), stats(reference, 3660)
    assert got.height == want.height == 2
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9, abs_tol=1e-6)
