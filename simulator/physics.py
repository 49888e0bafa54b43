"""Physics shared by the device models: sun, weather, daily curves and thermal lags.

Everything here is a pure function or a small state object advanced with an explicit `dt`, so
the simulator stays deterministic for a given seed whatever the wall clock does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as dt_timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "AmbientModel",
    "CloudModel",
    "FirstOrderLag",
    "TransformerThermal",
    "TransformerThermalParams",
    "base_load_factor",
    "charging_activity",
    "clear_sky_irradiance",
    "dc_taper_factor",
    "inverter_efficiency",
    "local_hour",
    "ou_step",
    "site_timezone",
    "solar_elevation_deg",
    "solar_hour",
]


def solar_elevation_deg(latitude: float, longitude: float, when: datetime) -> float:
    """Sun elevation above the horizon in degrees (NOAA/Spencer Fourier-series approximation).

    Accurate to a fraction of a degree, which is far below what clouds do to irradiance.
    """
    utc = when.astimezone(UTC)
    hour = utc.hour + utc.minute / 60 + (utc.second + utc.microsecond / 1e6) / 3600
    day_of_year = utc.timetuple().tm_yday
    gamma = 2 * math.pi / 365 * (day_of_year - 1 + (hour - 12) / 24)
    declination = (
        0.006918
        - 0.399912 * math.cos(gamma)
        + 0.070257 * math.sin(gamma)
        - 0.006758 * math.cos(2 * gamma)
        + 0.000907 * math.sin(2 * gamma)
        - 0.002697 * math.cos(3 * gamma)
        + 0.00148 * math.sin(3 * gamma)
    )
    equation_of_time_min = 229.18 * (
        0.000075
        + 0.001868 * math.cos(gamma)
        - 0.032077 * math.sin(gamma)
        - 0.014615 * math.cos(2 * gamma)
        - 0.040849 * math.sin(2 * gamma)
    )
    true_solar_min = hour * 60 + equation_of_time_min + 4 * longitude
    hour_angle = math.radians(true_solar_min / 4 - 180)
    lat = math.radians(latitude)
    cos_zenith = math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(declination) * math.cos(hour_angle)
    return 90.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))


def clear_sky_irradiance(elevation_deg: float) -> float:
    """Global horizontal irradiance under a clear sky, W/m² (a simple air-mass fit)."""
    if elevation_deg <= 0:
        return 0.0
    return 1000.0 * math.pow(math.sin(math.radians(elevation_deg)), 1.2)


def site_timezone(timezone: str, longitude: float) -> tzinfo:
    """The site's clock. Falls back to mean solar time when the zone database lacks the name."""
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return dt_timezone(timedelta(minutes=round(longitude * 4)))


def local_hour(when: datetime, tz: tzinfo) -> float:
    """Clock hour at the site, 0..24."""
    local = when.astimezone(tz)
    return local.hour + local.minute / 60 + (local.second + local.microsecond / 1e6) / 3600


def solar_hour(when: datetime, longitude: float) -> float:
    """Mean solar time, 0..24: what the weather follows, whatever the clock says."""
    utc = when.astimezone(UTC)
    hour = utc.hour + utc.minute / 60 + (utc.second + utc.microsecond / 1e6) / 3600
    return (hour + longitude / 15) % 24


def ou_step(value: float, mean: float, sigma: float, tau_s: float, dt: float, rng: random.Random) -> float:
    """Exact Ornstein-Uhlenbeck update: mean-reverting noise whose spread does not depend on dt."""
    decay = math.exp(-dt / tau_s)
    return mean + (value - mean) * decay + sigma * math.sqrt(1 - decay * decay) * rng.gauss(0.0, 1.0)


class FirstOrderLag:
    """A first-order lag toward a target, updated exactly for a piecewise-constant target.

    The exact exponential form stays stable for any step, so the grid step can be chosen for
    event resolution rather than for numerical stability.
    """

    __slots__ = ("tau_s", "value")

    def __init__(self, value: float, tau_s: float) -> None:
        self.value = value
        self.tau_s = tau_s

    def step(self, target: float, dt: float) -> float:
        self.value = target + (self.value - target) * math.exp(-dt / self.tau_s)
        return self.value


class CloudModel:
    """Slowly varying cloud attenuation shared by every PV inverter of a site.

    Cloudiness is a clamped OU process: mostly clear with passing cloud banks lasting minutes.
    """

    def __init__(self, rng: random.Random, mean: float = 0.15, sigma: float = 0.2, tau_s: float = 900.0) -> None:
        self._rng = rng
        self._mean = mean
        self._sigma = sigma
        self._tau_s = tau_s
        self._latent = mean + sigma * rng.gauss(0.0, 1.0)

    @property
    def transmission(self) -> float:
        """Fraction of clear-sky irradiance reaching the panels (0.15..1)."""
        return 1.0 - min(0.85, max(0.0, self._latent))

    def step(self, dt: float) -> None:
        self._latent = ou_step(self._latent, self._mean, self._sigma, self._tau_s, dt, self._rng)


class AmbientModel:
    """Outdoor air temperature: a daily sinusoid (coolest before dawn) plus weather noise."""

    def __init__(
        self, rng: random.Random, low_c: float = 18.0, high_c: float = 28.0, noise_sigma_c: float = 0.5
    ) -> None:
        self._rng = rng
        self._mid = (low_c + high_c) / 2
        self._amp = (high_c - low_c) / 2
        self._noise_sigma = noise_sigma_c
        self._noise = noise_sigma_c * rng.gauss(0.0, 1.0)

    def value(self, solar_hour: float) -> float:
        # The warmest hour lags solar noon by about three hours.
        return self._mid + self._amp * math.cos(2 * math.pi * (solar_hour - 15.0) / 24) + self._noise

    def step(self, dt: float) -> None:
        self._noise = ou_step(self._noise, 0.0, self._noise_sigma, 3600.0, dt, self._rng)


def base_load_factor(hour: float) -> float:
    """Site base load (lighting, buildings) relative to its daytime peak, ~0.3 at night."""
    daily = 0.65 + 0.35 * math.cos(2 * math.pi * (hour - 14.0) / 24)
    evening = 0.1 * math.exp(-(((hour - 19.0) / 1.5) ** 2))
    return daily + evening


def charging_activity(hour: float) -> float:
    """Relative charging demand by clock hour: quiet at night, busiest mid-afternoon."""
    if 6.0 <= hour <= 22.0:
        return 0.15 + 0.85 * math.sin(math.pi * (hour - 6.0) / 16.0)
    return 0.15


def dc_taper_factor(soc_pct: float) -> float:
    """Fraction of full power a battery accepts: constant current to 80 % SoC, then taper."""
    if soc_pct <= 80.0:
        return 1.0
    return max(0.1, 1.0 - 0.9 * (soc_pct - 80.0) / 20.0)


def inverter_efficiency(load_fraction: float) -> float:
    """PV inverter efficiency: about 97 % above a third of rating, falling off at low load."""
    if load_fraction <= 0.0:
        return 0.0
    return max(0.0, 0.975 - 0.006 / load_fraction)


@dataclass(frozen=True)
class TransformerThermalParams:
    """IEC 60076-7 ONAN distribution-transformer defaults (domain.md §3.4)."""

    top_oil_rise_k: float = 60.0  # Δθor
    gradient_k: float = 23.0  # gr
    hot_spot_factor: float = 1.2  # H
    oil_exponent: float = 0.8  # x
    winding_exponent: float = 1.6  # y
    loss_ratio: float = 6.5  # R
    k11: float = 1.0
    k21: float = 1.0
    k22: float = 2.0
    tau_oil_min: float = 180.0
    tau_winding_min: float = 4.0
    enclosure_surcharge_k: float = 10.0


class TransformerThermal:
    """Top-oil and hot-spot temperatures per the IEC 60076-7 differential-equation form.

    Top oil follows the ultimate rise with the oil time constant (hours); the hot-spot gradient
    is the difference of two lags, one on the winding time constant (minutes) and one on the
    oil time constant, which with k21 = 1 reduces to a single fast lag.
    """

    def __init__(self, load_factor: float, ambient_c: float, params: TransformerThermalParams | None = None) -> None:
        self.params = params or TransformerThermalParams()
        # > 1: cooling lost (blocked radiator fins, low oil): more top-oil rise at the same load.
        self.cooling_factor = 1.0
        p = self.params
        theta_a = ambient_c + p.enclosure_surcharge_k
        # Start in steady state so a fresh simulation does not show a cold transformer warming up.
        self.top_oil_c = theta_a + self._ultimate_oil_rise(load_factor)
        gradient = p.hot_spot_factor * p.gradient_k * math.pow(load_factor, p.winding_exponent)
        self._dh1 = p.k21 * gradient
        self._dh2 = (p.k21 - 1.0) * gradient

    def _ultimate_oil_rise(self, k: float) -> float:
        p = self.params
        rise = p.top_oil_rise_k * math.pow((1 + p.loss_ratio * k * k) / (1 + p.loss_ratio), p.oil_exponent)
        return rise * getattr(self, "cooling_factor", 1.0)

    @property
    def hot_spot_c(self) -> float:
        return self.top_oil_c + self._dh1 - self._dh2

    def step(self, load_factor: float, ambient_c: float, dt: float) -> None:
        p = self.params
        theta_a = ambient_c + p.enclosure_surcharge_k
        tau_oil = p.k11 * p.tau_oil_min * 60.0
        oil_target = theta_a + self._ultimate_oil_rise(load_factor)
        self.top_oil_c = oil_target + (self.top_oil_c - oil_target) * math.exp(-dt / tau_oil)
        gradient = p.hot_spot_factor * p.gradient_k * math.pow(load_factor, p.winding_exponent)
        tau_1 = p.k22 * p.tau_winding_min * 60.0
        tau_2 = p.tau_oil_min * 60.0 / p.k22
        target_1 = p.k21 * gradient
        target_2 = (p.k21 - 1.0) * gradient
        self._dh1 = target_1 + (self._dh1 - target_1) * math.exp(-dt / tau_1)
        self._dh2 = target_2 + (self._dh2 - target_2) * math.exp(-dt / tau_2)
