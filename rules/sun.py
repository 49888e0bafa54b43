"""Sun elevation for day/night context: PV producing nothing at night is no fault."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from astral import Observer
from astral.sun import elevation

# Below this elevation PV output is too low to judge (shared/domain.md §5: "daylight").
DAYLIGHT_ELEVATION_DEG = 10.0


@lru_cache(maxsize=4096)
def _elevation(latitude: float, longitude: float, minute: datetime) -> float:
    return float(elevation(Observer(latitude=latitude, longitude=longitude), minute))


def sun_elevation_deg(latitude: float, longitude: float, when: datetime) -> float:
    """Solar elevation in degrees, at minute resolution (cached: evaluated every tick per site)."""
    return _elevation(latitude, longitude, when.replace(second=0, microsecond=0))


def is_daylight(latitude: float, longitude: float, when: datetime) -> bool:
    return sun_elevation_deg(latitude, longitude, when) > DAYLIGHT_ELEVATION_DEG
