"""The exponential trend fit (IEC 60076-7 first-order approach) against a known simulated rise."""

import math

import pytest
from pydantic import ValidationError

from rules.model import Rule
from tests.unit.test_rule_kinds import T0, TX, feed, make

TAU_S = 3 * 3600.0


def oil(t_s: float, asymptote: float, start: float = 60.0) -> float:
    """Top oil approaching `asymptote` from `start` with the ONAN time constant, from t = 0."""
    return asymptote - (asymptote - start) * math.exp(-t_s / TAU_S)


def true_seconds_to(limit: float, now_s: float, asymptote: float, start: float = 60.0) -> float:
    # asymptote - (asymptote - start) e^(-t/tau) = limit  ->  t = tau ln((A - start) / (A - limit))
    return TAU_S * math.log((asymptote - start) / (asymptote - limit)) - now_s


def forecast_rule(fit: str) -> dict:
    rule = {
        "id": f"oil_{fit}",
        "kind": "trend",
        "metric": "top_oil_temp_c",
        "limit": 95,
        "window": "1h",
        "horizon": "2h",
        "floor": 70,
        "message": "{device_id} oil {value:.1f} {unit}: {forecast}",
    }
    if fit == "exponential":
        rule |= {
            "fit": "exponential",
            "time_constant": "3h",
            "message": "{forecast} (levels off near {asymptote:.0f} {unit})",
        }
    return rule


def series(asymptote: float, hours: float) -> list[tuple[float, str, str, float]]:
    return [(s, "TX01", "top_oil_temp_c", oil(s, asymptote)) for s in range(0, int(hours * 3600), 60)]


def test_exponential_fit_forecasts_the_true_crossing_where_a_line_is_early():
    # Asymptote 105 °C: 95 °C is reached after tau ln(45/10) = 4.5 h.
    e = make([forecast_rule("exponential"), forecast_rule("linear")], TX)
    findings = [f for f in feed(e, series(105.0, 5.0)) if f.action == "fire"]
    expo = next(f for f in findings if f.rule_id == "oil_exponential")
    line = next(f for f in findings if f.rule_id == "oil_linear")
    expo_at = (expo.ts - T0).total_seconds()
    truth = true_seconds_to(95.0, expo_at, 105.0)
    assert expo.seconds_to_limit is not None
    # Within 10 % of the true remaining time (and it fires when the truth is inside the 2 h horizon).
    assert abs(expo.seconds_to_limit - truth) <= 0.1 * truth, (expo.seconds_to_limit, truth)
    assert truth <= 2 * 3600 * 1.1
    assert "reaches 95 °C in about" in expo.message and "levels off near 105 °C" in expo.message
    # The straight line overshoots: it fires earlier and promises the limit sooner than the truth.
    line_at = (line.ts - T0).total_seconds()
    assert line_at < expo_at
    assert line.seconds_to_limit is not None and line.seconds_to_limit < 0.8 * true_seconds_to(95.0, line_at, 105.0)


def test_exponential_fit_stays_quiet_when_the_oil_levels_off_below_the_limit():
    # Asymptote 92 °C: never reaches 95 °C. The straight line still forecasts it (a false alarm).
    e = make([forecast_rule(fit) | {"horizon": "4h"} for fit in ("exponential", "linear")], TX)
    findings = feed(e, series(92.0, 6.0))
    fired = {f.rule_id for f in findings if f.action == "fire"}
    assert "oil_linear" in fired
    assert "oil_exponential" not in fired


def test_exponential_fit_clears_when_the_rise_stops():
    e = make([forecast_rule("exponential")], TX)
    rise = series(105.0, 4.0)
    last = rise[-1][3]
    flat = [(s, "TX01", "top_oil_temp_c", last - 0.002 * (s - 4 * 3600) / 60) for s in range(4 * 3600, 7 * 3600, 60)]
    findings = feed(e, rise + flat)
    actions = [f.action for f in findings]
    assert actions[:2] == ["fire", "clear"]


def test_exponential_fit_needs_a_time_constant_and_a_trend_rule():
    base = {"id": "x", "title": "t", "class": "II", "metric": "top_oil_temp_c", "window": "1h"}
    with pytest.raises(ValidationError, match="time_constant"):
        Rule.model_validate(base | {"kind": "trend", "limit": 95, "horizon": "1h", "fit": "exponential"})
    with pytest.raises(ValidationError, match="for trend rules"):
        Rule.model_validate(base | {"kind": "rate", "rise_per_min": 1, "fit": "exponential", "time_constant": "3h"})


def test_exponential_sums_stay_exact_over_many_time_constants():
    # A day flat, then a rise with tau 30 min: without re-basing, the weights exp(age / tau) of a
    # day of expired buckets (e^48) would drown the window's sums in rounding error.
    tau = 1800.0
    rule = forecast_rule("exponential") | {"time_constant": "30m", "window": "15m", "floor": 85}
    e = make([rule], TX)
    start = 86400
    flat = [(s, "TX01", "top_oil_temp_c", 60.0) for s in range(0, start, 120)]
    rise = [
        (s, "TX01", "top_oil_temp_c", 105 - 45 * math.exp(-(s - start) / tau)) for s in range(start, start + 7200, 60)
    ]
    fire = next(f for f in feed(e, flat + rise, step_s=300) if f.action == "fire")
    now = (fire.ts - T0).total_seconds() - start
    truth = tau * math.log(45 / 10) - now
    assert fire.seconds_to_limit is not None and abs(fire.seconds_to_limit - truth) <= 0.1 * truth, (
        fire.seconds_to_limit,
        truth,
    )
